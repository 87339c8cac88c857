"""Any tokenizer: an end-of-document token other than <|endoftext|> (a Llama-3-style
<|end_of_text|> with a non-zero id, built with the tokenizers library), a GPT-2-style tokenizer
saved as a transformers folder, a one-line error for a token the vocabulary lacks, and shards
made with <|end_of_text|> by two tasks + merge that the trainer trains on and evaluate.py
evaluates (the merged valid split's shards, which evaluate.py could not read before)."""
import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmtrain_prep.merge_manifests import merge_manifests
from llmtrain_prep.readers import InputError
from llmtrain_prep.tokenize_corpus import tokenize_corpus
from llmtrain_prep.train_tokenizer import train_tokenizer
from llmtrain.data.indexed import IndexedDataset
from llmtrain.data.manifest import Manifest
from trainutil import REPO, assert_one_line_error, run_python

SAMPLE = REPO / "data" / "sample" / "corpus.jsonl.gz"
END = "<|end_of_text|>"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """80 sample documents (cut to 1,200 characters) in two JSONL files."""
    root = tmp_path_factory.mktemp("corpus")
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in itertools.islice(fh, 80)]
    docs = [{"id": d["id"], "text": d["text"][:1200]} for d in docs]
    for k in range(2):
        (root / f"part{k}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[k::2]), encoding="utf-8")
    return root, docs


def _bpe(texts, specials, vocab_size=400):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return tok


@pytest.fixture(scope="module")
def llama_style(corpus, tmp_path_factory):
    """A byte-level BPE whose end of document is <|end_of_text|> at id 1 (after <|begin_of_text|>),
    and which has no <|endoftext|>."""
    tok = _bpe([d["text"] for d in corpus[1]], ["<|begin_of_text|>", END])
    path = tmp_path_factory.mktemp("llama") / "tokenizer.json"
    tok.save(str(path))
    assert tok.token_to_id(END) == 1 and tok.token_to_id("<|endoftext|>") is None
    return str(path)


@pytest.fixture(scope="module")
def gpt2_folder(corpus, tmp_path_factory):
    """A GPT-2-style tokenizer (byte-level BPE, <|endoftext|>) saved by transformers into a folder."""
    from transformers import GPT2TokenizerFast

    tok = _bpe([d["text"] for d in corpus[1]], ["<|endoftext|>"], 350)
    folder = tmp_path_factory.mktemp("gpt2") / "gpt2-style"
    hf = GPT2TokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    hf.save_pretrained(folder)
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    return folder


def _check_round_trip(prefix, tok_path, docs, eod):
    tok = Tokenizer.from_file(str(tok_path))
    ds = IndexedDataset(f"{prefix}_train")
    assert len(ds) == len(docs)
    for i, d in enumerate(docs):
        ids = ds[i]
        assert ids[-1] == eod and eod not in ids[:-1]
        assert tok.decode(ids[:-1].tolist(), skip_special_tokens=False) == d["text"]


def test_end_of_text_tokenizer(corpus, llama_style, tmp_path):
    root, docs = corpus
    prefix = tmp_path / "l"
    m = tokenize_corpus([root], llama_style, str(prefix), valid_fraction=0.0, eod_token=END, quiet=True)
    assert m["eod_token"] == END and m["eod_token_id"] == 1
    assert Manifest.read(prefix).eod_token_id == 1
    order = [d for k in range(2) for d in docs[k::2]]  # file by file
    _check_round_trip(prefix, llama_style, order, 1)
    # the default <|endoftext|> is not in this vocabulary: one line naming the file and the fix, nothing written
    with pytest.raises(InputError, match=r"has no '<\|endoftext\|>' token.*--eod-token"):
        tokenize_corpus([root], llama_style, str(tmp_path / "x"), quiet=True)
    assert not list(tmp_path.glob("x*"))


def test_gpt2_style_transformers_folder(corpus, gpt2_folder, tmp_path):
    root, docs = corpus
    m = tokenize_corpus([root / "part0.jsonl"], str(gpt2_folder), str(tmp_path / "g"), valid_fraction=0.0,
                        quiet=True)
    eod = Tokenizer.from_file(str(gpt2_folder / "tokenizer.json")).token_to_id("<|endoftext|>")
    assert m["eod_token"] == "<|endoftext|>" and m["eod_token_id"] == eod
    assert m["tokenizer"]["path"] == str(gpt2_folder / "tokenizer.json")  # the file, so its sha256 is checkable
    _check_round_trip(tmp_path / "g", gpt2_folder / "tokenizer.json", docs[0::2], eod)


def test_train_tokenizer_with_another_eod(corpus, tmp_path):
    out = tmp_path / "t.json"
    train_tokenizer([corpus[0]], 300, str(out), quiet=True, eod_token=END)
    tok = Tokenizer.from_file(str(out))
    assert tok.token_to_id(END) == 0 and tok.token_to_id("<|endoftext|>") is None


@pytest.mark.slow
def test_unknown_eod_token_cli(corpus, llama_style, tmp_path):
    r = run_python([REPO / "data_prep" / "tokenize_corpus.py", "--input", corpus[0], "--tokenizer", llama_style,
                    "--output-prefix", tmp_path / "o", "--eod-token", "</s>"])
    assert_one_line_error(r, llama_style, "'</s>'", "--eod-token")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_end_of_text_shards_train_and_evaluate(corpus, llama_style, tmp_path):
    """Two tasks + merge with <|end_of_text|>, 3 training steps, then evaluate.py on the merged
    valid split (several shards)."""
    prefix = tmp_path / "data" / "c"
    for i in range(2):
        tokenize_corpus([corpus[0]], llama_style, str(prefix), eod_token=END, valid_fraction=0.3, task_index=i,
                        num_tasks=2, quiet=True)
    merge_manifests(str(prefix), quiet=True)
    m = Manifest.read(prefix)
    assert m.eod_token == END and m.eod_token_id == 1 and len(m.splits["valid"].shards) == 2
    run = tmp_path / "run"
    r = run_python([REPO / "launcher" / "pretrain.py", "--run-dir", run, f"data.prefix={prefix}",
                    "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
                    "train.max_steps=3", "train.global_batch_size=2", "train.warmup_steps=1", "train.eval_interval=0",
                    "train.eval_batches=1", "train.log_interval=1"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()
              if '"split"' not in ln and '"loss"' in ln]
    assert len(losses) == 3 and all(np.isfinite(losses))
    out = tmp_path / "eval.json"
    r = run_python([REPO / "launcher" / "evaluate.py", run, "--out", out])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    valid = [IndexedDataset(p) for p in m.shard_prefixes("valid")]
    assert res["shards"] == 2 and res["windows"] == sum((d.num_tokens - 1) // 32 for d in valid)
    assert res["eod_tokens"] > 0 and np.isfinite(res["loss"]) and res["bits_per_byte"] > 0
    assert Path(res["data"]) == Path(f"{prefix}_valid")
