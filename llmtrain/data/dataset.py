"""Opening the token data of a run: one dataset or a weighted blend, validated before training.

``data.prefix`` is a PREFIX written by data_prep/tokenize_corpus.py, or a blend in Megatron's
notation, "0.7 PREFIX_A 0.3 PREFIX_B". Every dataset must come from the same tokenizer.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from llmtrain.config import Config
from llmtrain.core.errors import ConfigError


@dataclass
class DataBundle:
    prefixes: list[str]
    weights: list[float]
    manifests: list[dict]
    tokenizer_path: str
    vocab_size: int
    train: object  # BlendedSamples over TokenWindows
    valid: object | None

    def end_of_document_id(self) -> int:
        """The token id that ends every document of the data (data.document_mask masks at it):
        the manifest's eod_token_id, else the id of its eod_token (default <|endoftext|>) in
        the run's tokenizer."""
        from llmtrain.tokenizer import load_tokenizer, manifest_eod_id, manifest_eod_token

        eod = manifest_eod_id(self.manifests,
                              lambda name: load_tokenizer(self.tokenizer_path, eod_token=None)[0].token_to_id(name))
        if eod is None:
            name = manifest_eod_token(self.manifests)
            raise ConfigError(f"{self.prefixes[0]}_manifest.json: data.document_mask needs the end-of-document "
                              f"token, but the manifest has no eod_token_id and {self.tokenizer_path} has no "
                              f"{name!r}; re-create the "
                              f"data with data_prep/tokenize_corpus.py --eod-token, or set data.document_mask=false")
        return eod


def parse_blend(spec: str) -> tuple[list[float], list[str]]:
    """'PREFIX' → ([1.0], [PREFIX]); 'w1 P1 w2 P2 ...' → weights and prefixes."""
    parts = spec.split()
    if len(parts) == 1:
        return [1.0], parts
    if len(parts) % 2:
        raise ConfigError(f"data.prefix='{spec}': a blend is pairs of 'WEIGHT PREFIX', e.g. '0.7 a/data 0.3 b/data'")
    weights, prefixes = [], []
    for w, p in zip(parts[::2], parts[1::2]):
        try:
            weights.append(float(w))
        except ValueError:
            raise ConfigError(f"data.prefix='{spec}': '{w}' is not a weight; write pairs 'WEIGHT PREFIX'") from None
        if weights[-1] <= 0:
            raise ConfigError(f"data.prefix='{spec}': weight {w} must be > 0")
        prefixes.append(p)
    return weights, prefixes


def read_manifest(prefix: str) -> tuple[dict, Path]:
    """PREFIX_manifest.json as a dict, validated by llmtrain.data.manifest.Manifest (the type its
    writer and the task merge use), and its path; ConfigError (one line) when missing or malformed."""
    from llmtrain.data.manifest import Manifest, ManifestError

    path = Path(f"{prefix}_manifest.json")
    if not path.is_file():
        raise ConfigError(
            f"{path}: data manifest not found (data.prefix {prefix}); create the dataset with "
            f"python data_prep/tokenize_corpus.py --output-prefix {prefix} ..."
        )
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); re-run data_prep/tokenize_corpus.py") from None
    try:
        Manifest.from_dict(obj, path)
    except ManifestError as e:
        raise ConfigError(str(e)) from None
    return obj, path


def tokenizer_of(manifest: dict) -> tuple[str | None, str | None]:
    """(tokenizer path, sha256) a manifest records (any format)."""
    from llmtrain.data.manifest import Manifest

    m = Manifest.from_dict(manifest)
    return m.tokenizer_path, m.tokenizer_sha256


def padded_vocab(vocab_size: int) -> int:
    """The model's vocabulary for a tokenizer's: rounded up to a multiple of 64 for matmul efficiency."""
    return 64 * math.ceil(vocab_size / 64)


def tokenizer_vocab_size(path: str, named_by: str) -> int:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: tokenizer not found (named by {named_by}); set data.tokenizer=PATH")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path)).get_vocab_size()
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise ConfigError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None


def split_shards(prefix: str, manifest: dict, split: str) -> list[str]:
    """The .bin/.idx prefixes of one split, as llmtrain.data.manifest.Manifest lists them: the
    manifest's splits.<split>.shards (paths relative to the manifest's folder; a format-1
    manifest's split is PREFIX_<split>); [] when the split is absent."""
    from llmtrain.data.manifest import Manifest

    return Manifest.from_dict(manifest, Path(f"{prefix}_manifest.json")).shard_prefixes(split)


def open_shards(prefix: str, manifest: dict, split: str) -> list:
    """The IndexedDatasets of one split (memory-mapped; nothing is read per document), each checked
    against the document and token counts its manifest records. DataFormatError (one line naming
    the shard, the manifest and the fix) when they differ: the files were replaced or cut short."""
    from llmtrain.data.indexed import DataFormatError, IndexedDataset
    from llmtrain.data.manifest import Manifest

    path = Path(f"{prefix}_manifest.json")
    m = Manifest.from_dict(manifest, path)
    sp = m.splits.get(split)
    if sp is None:
        return []
    shards = [IndexedDataset(p) for p in m.shard_prefixes(split)]
    if m.format_version >= 2:  # earlier manifests do not record counts per shard
        for ds, rec in zip(shards, sp.shards):
            recorded = (rec.documents, rec.tokens)
            if recorded != (0, 0) and (len(ds), ds.num_tokens) != recorded:  # (0, 0): a shard named without counts
                raise DataFormatError(f"{ds.prefix}.idx: {len(ds)} documents and {ds.num_tokens} tokens, but {path} "
                                      f"records {rec.documents} and {rec.tokens}; the files do not belong to this "
                                      f"manifest, re-create them with python data_prep/tokenize_corpus.py")
    return shards


def open_loss_masks(manifest: dict, shards: list) -> list | None:
    """The loss masks of a prompt/response dataset's shards (PREFIX_train_mask.bin/.idx beside
    PREFIX_train.bin/.idx: one uint8 per token), checked against their tokens; None when the
    manifest records no loss mask. DataFormatError (one line naming the file and the fix)."""
    from llmtrain.data.indexed import DataFormatError, IndexedDataset

    if not manifest.get("loss_mask"):
        return None
    fix = "re-create the dataset with python data_prep/tokenize_corpus.py --format prompt-response"
    masks = []
    for sh in shards:
        m = IndexedDataset(f"{sh.prefix}_mask")
        if m.dtype != "uint8" or len(m) != len(sh) or m.num_tokens != sh.num_tokens:
            raise DataFormatError(f"{m.prefix}.bin: the loss mask ({m.num_tokens} {m.dtype} values in {len(m)} "
                                  f"documents) does not match {sh.prefix}.bin ({sh.num_tokens} tokens in {len(sh)} "
                                  f"documents); {fix}")
        masks.append(m)
    return masks


def load_data(cfg: Config, spec: str, config_path: str) -> DataBundle:
    """Open and validate every dataset of ``spec`` and its tokenizer. Raises ConfigError or
    DataFormatError (both one line naming the file) before any training starts."""
    from llmtrain.data.sampler import BlendedSamples, TokenWindows

    weights, prefixes = parse_blend(spec)
    manifests, hashes = [], set()
    for p in prefixes:
        m, _ = read_manifest(p)
        manifests.append(m)
        hashes.add(tokenizer_of(m)[1])
    if len(hashes) > 1:
        raise ConfigError(f"data.prefix='{spec}': the blended datasets were made with different tokenizers "
                          f"(see their _manifest.json); re-tokenise them with one tokenizer")
    named, _ = tokenizer_of(manifests[0])
    tok_path = cfg.data.tokenizer or named
    if not tok_path:
        raise ConfigError(f"{prefixes[0]}_manifest.json: names no tokenizer; set data.tokenizer=PATH")
    vocab = tokenizer_vocab_size(tok_path, "data.tokenizer" if cfg.data.tokenizer else f"{prefixes[0]}_manifest.json")
    for p, m in zip(prefixes, manifests):
        if m.get("vocab_size") is not None and m["vocab_size"] != vocab:
            raise ConfigError(
                f"{tok_path}: vocab size {vocab} does not match the {m['vocab_size']} of the tokenizer that made "
                f"{p}_*.bin (see {p}_manifest.json); use the same tokenizer"
            )
    model_vocab = cfg.model.vocab_size or vocab
    if model_vocab < vocab:
        raise ConfigError(
            f"{config_path}: model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {vocab} "
            f"({tok_path}); remove model.vocab_size to take it from the tokenizer"
        )
    T, seed = cfg.train.seq_len, cfg.train.seed  # the window trained, at most the model's positions
    train, valid = [], []
    for i, (p, m) in enumerate(zip(prefixes, manifests)):
        shards = open_shards(p, m, "train")
        head = shards[0].tokens[: min(shards[0].num_tokens, 1 << 20)]
        if len(head) and int(head.max()) >= model_vocab:
            raise ConfigError(
                f"{shards[0].prefix}.bin: token id {int(head.max())} is outside the vocabulary of {tok_path} "
                f"({vocab}); "
                f"the data was made with another tokenizer"
            )
        train.append(TokenWindows(shards, T, seed + 7919 * i, shuffle=True, masks=open_loss_masks(m, shards)))
        vshards = open_shards(p, m, "valid")
        if vshards and sum(v.num_tokens for v in vshards) > T + 1:
            valid.append((weights[i], TokenWindows(vshards, T, seed, shuffle=False, masks=open_loss_masks(m, vshards))))
    valid_blend = BlendedSamples([v for _, v in valid], [w for w, _ in valid]) if valid else None
    if valid_blend is not None:
        valid_blend.num_samples = sum(v.num_samples for _, v in valid)
    return DataBundle(prefixes, weights, manifests, str(tok_path), vocab, BlendedSamples(train, weights), valid_blend)
