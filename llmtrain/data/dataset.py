"""Opening the token data of a run: one dataset, a weighted blend, or blends that change during
the run (data stages), validated before training.

``data.prefix`` is a PREFIX written by data_prep/tokenize_corpus.py, or a blend in Megatron's
notation, "0.7 PREFIX_A 0.3 PREFIX_B". ``data.stages`` lists later blends and the steps they start
at. Every dataset of every stage must come from the same tokenizer.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmtrain.config import Config
from llmtrain.core.errors import ConfigError


@dataclass
class Source:
    """One dataset of a run, as its stages read it: a prefix listed twice in one blend is two
    sources (each with its own shuffle), a prefix listed again in a later stage is the same one."""

    name: str  # the shortest unique tail of its path ("web", "a/web"), "#2" for a second listing
    prefix: str
    manifest: dict


@dataclass
class Stage:
    step: int  # the first step that reads it
    spec: str  # the blend as written (data.prefix, or a data.stages entry's prefix)
    sources: list[int]  # indices into DataBundle.sources
    weights: list[float]
    at: float | None = None  # as written in data.stages (None: data.prefix)


@dataclass
class DataBundle:
    prefixes: list[str]  # the first blend (data.prefix), as today
    weights: list[float]
    manifests: list[dict]
    tokenizer_path: str
    vocab_size: int
    train: object  # StagedSamples over TokenWindows
    valid: object | None  # the first blend's valid splits, blended by its weights
    sources: list[Source] | None = None  # every dataset of every stage
    stages: list[Stage] | None = None  # the first is data.prefix at step 0
    valid_by_prefix: dict | None = None  # name -> TokenWindows of that prefix's valid split (one per prefix)

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

    def has_loss_mask(self) -> bool:
        """Whether any dataset of any stage is prompt/response data with a loss mask."""
        return any(s.manifest.get("loss_mask") for s in self.sources)

    def per_source_valid(self) -> dict:
        """name -> the valid split of each dataset alone, when the run reads more than one
        dataset (with one, it is the blended valid split itself); {} otherwise."""
        return self.valid_by_prefix if len({s.prefix for s in self.sources}) > 1 else {}

    def tokens_by_source(self, samples: int) -> dict[str, int]:
        """The training tokens each source gave the first ``samples`` samples of the run (counted
        on the host from the sample positions: a pure function, nothing is stored)."""
        T = self.train.sources[0].seq_len
        return {s.name: int(c) * T for s, c in zip(self.sources, self.train.counts(samples))}

    def stage_at(self, sample: int) -> int:
        """The stage (index into ``stages``) that global sample ``sample`` belongs to."""
        return int(self.train.stage_of(sample)[0])

    def stage_summary(self, samples: int, global_batch: int) -> list[dict]:
        """Each stage with its start step, its blend and the tokens it gave the first ``samples``
        samples, in all and by source."""
        T = self.train.sources[0].seq_len
        out = []
        for k, st in enumerate(self.stages):
            lo = min(samples, st.step * global_batch)
            hi = samples if k + 1 == len(self.stages) else min(samples, self.stages[k + 1].step * global_batch)
            counts = self.train.counts(hi) - self.train.counts(lo)
            out.append({"step": st.step, "at": st.at, "prefix": st.spec, "tokens": (hi - lo) * T,
                        "tokens_by_source": {self.sources[i].name: int(counts[i]) * T for i in st.sources}})
        return out

    def record(self) -> dict:
        """What data_manifest.json records of the data: the first blend and its manifests (as
        before stages), every stage with the step it starts at, and every source."""
        return {"prefixes": self.prefixes, "weights": self.weights, "manifests": self.manifests,
                "stages": [{"step": st.step, "at": st.at, "prefix": st.spec, "weights": st.weights,
                            "sources": [self.sources[i].name for i in st.sources]} for st in self.stages],
                "sources": {s.name: s.prefix for s in self.sources}}


def parse_blend(spec: str, key: str = "data.prefix") -> tuple[list[float], list[str]]:
    """'PREFIX' → ([1.0], [PREFIX]); 'w1 P1 w2 P2 ...' → weights and prefixes. ``key``: the config
    key the blend came from, for the error."""
    parts = spec.split()
    if len(parts) == 1:
        return [1.0], parts
    if len(parts) % 2 or not parts:
        raise ConfigError(f"{key}='{spec}': a blend is pairs of 'WEIGHT PREFIX', e.g. '0.7 a/data 0.3 b/data'")
    weights, prefixes = [], []
    for w, p in zip(parts[::2], parts[1::2]):
        try:
            weights.append(float(w))
        except ValueError:
            raise ConfigError(f"{key}='{spec}': '{w}' is not a weight; write pairs 'WEIGHT PREFIX'") from None
        if not weights[-1] > 0 or not math.isfinite(weights[-1]):
            raise ConfigError(f"{key}='{spec}': weight {w} must be > 0")
        prefixes.append(p)
    return weights, prefixes


def source_names(prefixes: list[str]) -> list[str]:
    """A short name for each distinct prefix: the fewest trailing path parts that tell it from the
    others ("web", or "a/web" beside "b/web")."""
    parts = [Path(p).parts for p in prefixes]
    names = []
    for i, ps in enumerate(parts):
        n = 1
        while n < len(ps) and any(q[-n:] == ps[-n:] for j, q in enumerate(parts) if j != i):
            n += 1
        names.append("/".join(ps[-n:]))
    return names


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


def run_blends(cfg: Config, spec: str) -> list[tuple[str, str, float | None, int]]:
    """(config key, blend, at as written, first step) of each stage of the run: data.prefix (here
    ``spec``) from step 0, then data.stages at their resolved steps."""
    out = [("data.prefix", spec, None, 0)]
    for i, (st, step) in enumerate(zip(cfg.data.stages, cfg.stage_steps())):
        out.append((f"data.stages[{i}].prefix", st.prefix, st.at, step))
    return out


def _sources_and_stages(cfg: Config, spec: str) -> tuple[list[tuple[str, str]], list[Stage]]:
    """([(prefix, config key that first names it)] per source, the stages over them). The k-th
    listing of a prefix in a blend is the k-th source of that prefix, so a stage that lists a
    dataset again continues the stream the earlier stage read."""
    index: dict[tuple[str, int], int] = {}
    sources: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for key, blend, at, step in run_blends(cfg, spec):
        weights, prefixes = parse_blend(blend, key)
        seen: dict[str, int] = {}
        ids = []
        for p in prefixes:
            norm = os.path.normpath(p)
            k = seen[norm] = seen.get(norm, -1) + 1
            if (norm, k) not in index:
                index[(norm, k)] = len(sources)
                sources.append((p, key))
            ids.append(index[(norm, k)])
        share = sorted(zip(ids, (np.asarray(weights) / sum(weights)).round(12)))
        if stages and share == sorted(zip(stages[-1].sources, (np.asarray(stages[-1].weights) /
                                                               sum(stages[-1].weights)).round(12))):
            raise ConfigError(f"{key}='{blend}' is the blend the run already reads from step {stages[-1].step}; "
                              f"remove the stage or change its blend")
        stages.append(Stage(step, blend, ids, weights, at))
    return sources, stages


def load_data(cfg: Config, spec: str, config_path: str) -> DataBundle:
    """Open and validate every dataset of ``spec`` (data.prefix) and of every data.stages blend,
    and their tokenizer. Raises ConfigError or DataFormatError (both one line naming the file or
    key) before any training starts."""
    from llmtrain.data.sampler import BlendedSamples, StagedSamples, TokenWindows

    listed, stages = _sources_and_stages(cfg, spec)
    distinct = list(dict.fromkeys(os.path.normpath(p) for p, _ in listed))
    first_prefix = {os.path.normpath(p): (p, key) for p, key in reversed(listed)}
    manifests = {n: read_manifest(first_prefix[n][0])[0] for n in distinct}
    hashes = {n: tokenizer_of(m)[1] for n, m in manifests.items()}
    for n in distinct:
        if hashes[n] != hashes[distinct[0]]:
            p, key = first_prefix[n]
            raise ConfigError(f"{key}: {p} and {first_prefix[distinct[0]][0]} were made with different tokenizers "
                              f"(see their _manifest.json); re-tokenise them with one tokenizer")
    first = first_prefix[distinct[0]][0]
    named, _ = tokenizer_of(manifests[distinct[0]])
    tok_path = cfg.data.tokenizer or named
    if not tok_path:
        raise ConfigError(f"{first}_manifest.json: names no tokenizer; set data.tokenizer=PATH")
    vocab = tokenizer_vocab_size(tok_path, "data.tokenizer" if cfg.data.tokenizer else f"{first}_manifest.json")
    for n in distinct:
        m, p = manifests[n], first_prefix[n][0]
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
    shards, valid = {}, {}
    for n in distinct:
        p, m = first_prefix[n][0], manifests[n]
        shards[n] = open_shards(p, m, "train")
        head = shards[n][0].tokens[: min(shards[n][0].num_tokens, 1 << 20)]
        if len(head) and int(head.max()) >= model_vocab:
            raise ConfigError(
                f"{shards[n][0].prefix}.bin: token id {int(head.max())} is outside the vocabulary of {tok_path} "
                f"({vocab}); "
                f"the data was made with another tokenizer"
            )
        vshards = open_shards(p, m, "valid")
        if vshards and sum(v.num_tokens for v in vshards) > T + 1:
            valid[n] = TokenWindows(vshards, T, seed, shuffle=False, masks=open_loss_masks(m, vshards))
    names = dict(zip(distinct, source_names(distinct)))
    sources, train, count = [], [], {}
    for i, (p, _) in enumerate(listed):  # the i-th source's shuffle is seeded by i, as for a plain blend
        n = os.path.normpath(p)
        count[n] = count.get(n, 0) + 1
        sources.append(Source(names[n] + (f"#{count[n]}" if count[n] > 1 else ""), p, manifests[n]))
        train.append(TokenWindows(shards[n], T, seed + 7919 * i, shuffle=True,
                                  masks=open_loss_masks(manifests[n], shards[n])))
    G = cfg.train.global_batch_size
    staged = StagedSamples(train, [(st.step * G, st.sources, st.weights) for st in stages])
    s0 = stages[0]
    v0 = [(w, valid[os.path.normpath(sources[i].prefix)]) for i, w in zip(s0.sources, s0.weights)
          if os.path.normpath(sources[i].prefix) in valid]
    valid_blend = BlendedSamples([v for _, v in v0], [w for w, _ in v0]) if v0 else None
    if valid_blend is not None:
        valid_blend.num_samples = sum(v.num_samples for _, v in v0)
    return DataBundle([sources[i].prefix for i in s0.sources], list(s0.weights),
                      [sources[i].manifest for i in s0.sources], str(tok_path), vocab, staged, valid_blend,
                      sources, stages, {names[n]: v for n, v in valid.items()})
