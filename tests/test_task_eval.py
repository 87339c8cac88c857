"""Task metrics in the loop (train.eval_tasks): the scores equal a direct computation with the
plain GPT, every layout logs the same accuracies as its own final weights give, and bad task
files fail before training with one line naming the file, the line and the fix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from trainutil import REPO, SMALL, assert_one_line_error, read_metrics, run_python, run_torchrun

from llmtrain.config import ModelConfig
from llmtrain.core.errors import ConfigError
from llmtrain.eval.tasks import TaskScorer, batch_scores, encode_pair, load_task, load_tasks
from llmtrain.model.gpt import GPT
from llmtrain.tokenizer import load_tokenizer

PRETRAIN = REPO / "launcher" / "pretrain.py"

LONG = ("Python is an easy to learn, powerful programming language. It has efficient high-level data structures "
        "and a simple but effective approach to object-oriented programming. ") * 6
# The tests' own task (7 examples, 2-4 choices, an empty context, a context longer than seq_len,
# a context ending in a space, non-ASCII text); never the shipped one.
EXAMPLES = [
    {"context": "The quick brown fox jumps over the", "choices": [" lazy dog.", " moon", " a"], "label": 0},
    {"context": "", "choices": [" Python is a programming language.", " Zebra"], "label": 1},
    {"context": "A list is a mutable sequence ", "choices": ["type.", "of objects that can grow and shrink.", "x",
                                                          "é ü"], "label": 2},
    {"context": LONG + "The interpreter is", "choices": [" easily extended.", " blue", " the end of it all."],
     "label": 1},
    {"context": "To read a file, call", "choices": [" open()", " the function that opens it"], "label": 0, "id": "x"},
    {"context": "Exceptions are raised with the", "choices": [" raise statement.", " class keyword.",
                                                              " import statement.", " pass."], "label": 3},
    {"context": "A dictionary maps keys to", "choices": [" values.", " nothing at all"], "label": 1},
]


def write_task(path: Path, examples=EXAMPLES) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def direct_scores(model: GPT, tok, eod: int, seq_len: int, ex: dict) -> np.ndarray:
    """Each choice's summed log-likelihood, one unpadded sequence at a time."""
    out = []
    for choice in ex["choices"]:
        ctx, cont = encode_pair(tok, eod, ex["context"], choice)
        seq = (ctx + cont)[-(seq_len + 1):]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor(seq[:-1])[None])[0].double(), dim=-1)
        n = min(len(cont), len(seq) - 1)
        out.append(sum(float(lp[len(seq) - 2 - j, seq[len(seq) - 1 - j]]) for j in range(n)))
    return np.array(out)


@pytest.fixture
def one_thread():
    """Tiny forwards one at a time: more threads only spin against each other on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def direct_accuracy(model: GPT, tok, eod: int, seq_len: int, examples=EXAMPLES, scores=None) -> tuple[float, float]:
    acc = norm = 0
    for e, ex in enumerate(examples):
        s = scores[e] if scores is not None else direct_scores(model, tok, eod, seq_len, ex)
        acc += int(np.argmax(s)) == ex["label"]
        norm += int(np.argmax(s / np.array([len(c) for c in ex["choices"]]))) == ex["label"]
    return acc / len(examples), norm / len(examples)


def test_scores_equal_a_direct_computation_with_the_plain_gpt(token_data, tmp_path, one_thread):
    tok, eod = load_tokenizer(Path(token_data).parent / "tokenizer.json")
    seq_len = 32
    model = GPT(ModelConfig(n_layer=2, d_model=32, n_head=2, seq_len=seq_len, vocab_size=512), seed=3).eval()
    tasks = load_tasks([str(write_task(tmp_path / "mine.jsonl"))])
    assert tasks[0].name == "mine" and len(tasks[0].examples) == 7
    want = {(0, e): direct_scores(model, tok, eod, seq_len, ex) for e, ex in enumerate(EXAMPLES)}

    # the training shape only (the pipeline's), and up to 4 shapes split over 2 ranks
    for batch_size, world, shapes in ((3, 1, 1), (2, 2, 4)):
        total = np.zeros((1, 3))
        for rank in range(world):
            sc = TaskScorer(tasks, tok, eod, seq_len, batch_size, shapes=shapes, dp_rank=rank, dp_world=world)
            for b in sc.batches:
                with torch.no_grad():
                    got = batch_scores(model(b.x), b)
                for i, g in zip(b.rows, got.tolist()):
                    r = sc.rows[i]
                    assert g == pytest.approx(want[(r.task, r.example)][r.choice], abs=1e-4), (batch_size, r)
            with torch.no_grad():
                total += sc.run(model, torch.device("cpu")).numpy()
        assert total[0, 2] == 7  # every example counted once over the ranks
        acc, norm = direct_accuracy(model, tok, eod, seq_len, scores=[want[(0, e)] for e in range(7)])
        assert total[0, 0] / 7 == acc and total[0, 1] / 7 == norm, (batch_size, world)
    sc = TaskScorer(tasks, tok, eod, seq_len, 3)
    assert sc.truncated == 3  # the long context's three rows lost their beginning


@pytest.mark.slow
def test_forward_calls_come_in_a_few_fixed_shapes(token_data, tmp_path):
    """Whatever the examples' lengths (one-token choices, contexts past seq_len), every call of
    the logits function has one of at most 4 shapes, the training micro-batch's (micro x
    seq_len) and as many tokens in halved widths, padding calls included; with shapes=1 (the
    pipeline) only the training shape. A compiled kernel (dynamic=False flex attention on a GPU,
    train.compile) compiles each once and is never asked for another."""
    tok, eod = load_tokenizer(Path(token_data).parent / "tokenizer.json")
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=2, seq_len=64, vocab_size=512), seed=3).eval()
    short = [{"context": "", "choices": [" a", " b"], "label": 0}]
    seen: list[tuple[int, int]] = []

    @torch.no_grad()
    def logits_fn(x):
        seen.append(tuple(x.shape))
        return model(x)

    for shapes, allowed in ((4, {(4, 64), (8, 32), (16, 16)}), (1, {(4, 64)})):
        seen.clear()
        for examples, rank, world in ((EXAMPLES, 0, 1), (short, 0, 1), (EXAMPLES, 1, 3)):
            tasks = load_tasks([str(write_task(tmp_path / "t.jsonl", examples))])
            sc = TaskScorer(tasks, tok, eod, 64, 4, shapes=shapes, dp_rank=rank, dp_world=world)
            sc.n_calls += 1  # a rank with fewer batches than another adds a padding call
            sc.run(logits_fn, torch.device("cpu"))
        assert set(seen) <= allowed and len(seen) >= 6, (shapes, seen)
        assert len(set(seen)) > 1 or shapes == 1  # the short rows went into a narrower shape


BAD = {
    "label out of range": ('{"context": "a", "choices": [" b", " c"], "label": 2}', "out of range for 2 choices",
                           "0-based index"),
    "no choices": ('{"context": "a", "choices": [], "label": 0}', '"choices" is empty', "two or more"),
    "one choice": ('{"context": "a", "choices": [" b"], "label": 0}', "only one choice", "two or more"),
    "malformed line": ('{"context": "a", "choices": [" b", " c"], "label": 0', "malformed JSON",
                       "one JSON object"),
    "missing label": ('{"context": "a", "choices": [" b", " c"]}', 'missing "label"', '"label": int'),
    "label not int": ('{"context": "a", "choices": [" b", " c"], "label": "0"}', "is not an integer", "0-based"),
    "empty choice": ('{"context": "a", "choices": [" b", ""], "label": 0}', "choice 1", "non-empty string"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_task_files_name_the_file_the_line_and_the_fix(tmp_path, case):
    line, *needles = BAD[case]
    good = json.dumps(EXAMPLES[0])
    f = tmp_path / "bad.jsonl"
    f.write_text(f"{good}\n\n{line}\n{good}\n")  # the bad one on line 3 (after a blank line)
    with pytest.raises(ConfigError) as e:
        load_tasks([str(f)])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{f}:3: "), msg
    for n in needles:
        assert n in msg, msg


@pytest.mark.slow
def test_bad_task_file_stops_the_launcher_before_the_run_folder(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(EXAMPLES[0]) + '\n{"context": "a", "choices": [" b", " c"], "label": 5}\n')
    run = tmp_path / "run"
    r = run_python([PRETRAIN, "--run-dir", run, "train.max_steps=1", f"train.eval_tasks=[{f}]"], timeout=300)
    assert_one_line_error(r, f"{f}:2:", "out of range")
    assert not run.exists()
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no examples"):
        load_task(tmp_path / "empty.jsonl")
    with pytest.raises(ConfigError, match="task file not found"):
        load_task(tmp_path / "missing.jsonl")
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="both named 'mine'"):
        load_tasks([str(write_task(tmp_path / "mine.jsonl")), str(write_task(tmp_path / "d" / "mine.jsonl"))])


LAYOUTS = {  # processes, DeepSpeed config, overrides
    "single": (1, [], []),
    "zero2": (2, ["--deepspeed_config", REPO / "ds_configs" / "zero2.json"], []),
    "zero3": (2, ["--deepspeed_config", REPO / "ds_configs" / "zero3.json"], []),
    "pipeline": (2, ["--deepspeed_config", REPO / "ds_configs" / "zero1.json"], ["parallel.pipeline_stages=2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_logs_the_accuracy_of_its_own_weights(token_data, tmp_path, layout, one_thread):
    """Records at each evaluation and at the end, summary.json and HParams; the logged accuracy at
    the end is what the run's final weights give in the plain GPT, one example at a time."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from llmtrain.checkpoint.consolidate import load_gpt

    task = write_task(tmp_path / "mine.jsonl")
    run = tmp_path / "run"
    nproc, ds, overrides = LAYOUTS[layout]
    args = [*ds, "--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=2", "train.eval_interval=1",
            f"train.eval_tasks=[{task}]", *overrides]
    r = run_python([PRETRAIN, *args]) if nproc == 1 else run_torchrun(nproc, *args)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    recs = [x for x in read_metrics(run) if x.get("split") == "task:mine"]
    assert [x["step"] for x in recs] == [1, 2]
    assert all(set(x) == {"step", "tokens", "split", "acc", "acc_norm"} for x in recs)
    assert r.stdout.count("(7 examples)") == 2  # every example counted once over the ranks
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == {"mine": {"acc": recs[-1]["acc"], "acc_norm": recs[-1]["acc_norm"]}}

    model, _ = load_gpt(run)
    tok, eod = load_tokenizer(Path(token_data).parent / "tokenizer.json")
    assert (recs[-1]["acc"], recs[-1]["acc_norm"]) == direct_accuracy(model, tok, eod, 64)

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("task:mine/acc")] == pytest.approx([x["acc"] for x in recs])
    exp = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in exp.metric_infos} == {
        "hparam/final_train_loss", "hparam/final_valid_loss", "hparam/task:mine/acc", "hparam/task:mine/acc_norm"}


@pytest.mark.slow
def test_shipped_task_is_valid_and_rebuilt_exactly(tmp_path):
    shipped = REPO / "data" / "tasks" / "python_docs_cloze.jsonl"
    task = load_task(shipped)
    assert len(task.examples) >= 300 and all(len(e.choices) == 4 for e in task.examples)
    out = tmp_path / "again.jsonl"
    r = run_python([REPO / "data_prep" / "make_task.py", "--output", out], timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == shipped.read_bytes()
