"""Heuristic quality filters with their published thresholds.

Each filter is a `BaseFilter` (steps.py) registered under its YAML section: ``filter(doc)``
returns True to keep the document or the name of the rule that fired (the key in stats.json
and in the samples under removed/); a line-level filter (C4) may shorten ``doc.text``.
Every threshold is a field of the filter's ``Config`` dataclass, so the YAML can tune it
(``null`` disables a single rule, ``enabled: false`` the whole filter). Filters run in the
order they are registered below: language first, the cheapest to judge most documents.
Outside a pipeline a filter is also a callable ``f(text) -> (keep, reason, text)``.

Sources of the thresholds:

* Gopher quality and repetition: Rae et al. 2021, "Scaling Language Models: Methods,
  Analysis & Insights from Training Gopher", appendix A.1.1 and table A1.
* C4: Raffel et al. 2020 (section 2.2) and the tensorflow-datasets c4_utils reference code
  (lines with a word over 1000 characters, cookie/terms-of-use lines).
* FineWeb: Penedo et al. 2024, "The FineWeb Datasets", section 3.3 (custom filters):
  fraction of lines ending in punctuation ≤ 0.12, fraction of characters in duplicated
  lines ≥ 0.1 (they use 0.01 of characters in their released code, which we follow),
  fraction of lines shorter than 30 characters ≥ 0.67; and the list-like ratio of
  newlines to words > 0.3.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from llmtrain.core.errors import ConfigError

from .steps import BaseFilter, Document, register
from .text import count_sentences

# Punctuation and symbol characters: a token made only of these is a "symbol", not a word.
PUNCTUATION = set(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
) | {chr(c) for c in list(range(0, 32)) + list(range(127, 160))}



def _sentence_terminals() -> tuple[str, ...]:
    """Every character with the Unicode Sentence_Terminal property (. ! ? 。 ۔ ...), the
    set FineWeb's line-punctuation rule uses; computed once per process (~0.05 s)."""
    import regex

    pat = regex.compile(r"\p{Sentence_Terminal}")
    return tuple(pat.findall("".join(chr(c) for c in range(0x20000) if not 0xD800 <= c < 0xE000)))


TERMINAL_PUNCTUATION = _sentence_terminals()
TERMINAL_SET = frozenset(TERMINAL_PUNCTUATION)  # all single characters: `ln[-1] in` = `ln.endswith(tuple)`
assert all(len(c) == 1 for c in TERMINAL_PUNCTUATION)

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


def _dup_count(items):
    """(number of items that repeat an earlier one, characters in those repeats)."""
    seen: set = set()
    n = chars = 0
    for it in items:
        if it in seen:
            n += 1
            chars += len(it)
        else:
            seen.add(it)
    return n, chars


@register
class LanguageFilter(BaseFilter):
    """fastText lid.176 language ID (see langid.py): keeps a document whose top language is
    in ``languages`` (empty: any) with a score above ``threshold`` (FineWeb: English, 0.65);
    records ``language`` and ``language_score`` on the document."""

    name = "language"

    @dataclass
    class Config:
        enabled: bool = True
        languages: list[str] = field(default_factory=lambda: ["en"])  # []: any language
        threshold: float = 0.65

        def validate(self, where: str, key: str) -> None:
            if not 0.0 <= self.threshold <= 1.0:
                raise ConfigError(f"{where}: {key}.threshold must be in [0, 1] (got {self.threshold})")

    def __init__(self, config=None, max_samples: int = 100, **kwargs):
        from .langid import LanguageID

        super().__init__(config, max_samples, **kwargs)
        self.model = LanguageID(self.cfg.languages, self.cfg.threshold)

    def filter(self, doc: Document):
        keep, reason, _, (lang, score) = self.model(doc.text)
        doc.meta["language"], doc.meta["language_score"] = lang, round(score, 4)
        return True if keep else reason


@register
class GopherRepetition(BaseFilter):
    """Gopher repetition rules (Rae et al. 2021, table A1)."""

    name = "gopher_repetition"
    _para_re = re.compile(r"\n{2,}")
    _line_re = re.compile(r"\n+")

    @dataclass
    class Config:
        enabled: bool = True
        dup_line_frac: Optional[float] = 0.3
        dup_para_frac: Optional[float] = 0.3
        dup_line_char_frac: Optional[float] = 0.2
        dup_para_char_frac: Optional[float] = 0.2
        top_n_grams: list[list[float]] = field(default_factory=lambda: [[2, 0.2], [3, 0.18], [4, 0.16]])
        dup_n_grams: list[list[float]] = field(
            default_factory=lambda: [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.10]])

        def validate(self, where: str, key: str) -> None:
            for k in ("top_n_grams", "dup_n_grams"):
                for pair in getattr(self, k) or ():
                    if len(pair) != 2 or float(pair[0]) != int(pair[0]) or int(pair[0]) < 1:
                        raise ConfigError(f"{where}: {key}.{k} must be a list of [n, fraction] pairs with a whole n "
                                         f">= 1 (got {pair!r})")

    def __init__(self, config=None, max_samples: int = 100, **kwargs):
        super().__init__(config, max_samples, **kwargs)
        c = self.cfg
        self.top_n_grams = [(int(n), f) for n, f in (c.top_n_grams or ())]
        self.dup_n_grams = sorted((int(n), f) for n, f in (c.dup_n_grams or ()))

    def filter(self, doc: Document):
        c = self.cfg
        text = doc.text
        if not text:
            return "empty"
        n_chars = len(text)
        paras = self._para_re.split(text.strip())
        n_dup, dup_chars = _dup_count(paras)
        if c.dup_para_frac is not None and n_dup / len(paras) > c.dup_para_frac:
            return "dup_para_frac"
        if c.dup_para_char_frac is not None and dup_chars / n_chars > c.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = self._line_re.split(text)
        n_dup, dup_chars = _dup_count(lines)
        if c.dup_line_frac is not None and n_dup / len(lines) > c.dup_line_frac:
            return "dup_line_frac"
        if c.dup_line_char_frac is not None and dup_chars / n_chars > c.dup_line_char_frac:
            return "dup_line_char_frac"
        words = doc.words
        if not (self.top_n_grams or self.dup_n_grams):
            return True
        ids, cum = self._word_ids(words)
        hashes = _NGramHashes(ids)
        for n, frac in self.top_n_grams:
            if len(words) < n:
                continue
            # the most frequent n-gram (the first seen among equals), written with single spaces,
            # times its count
            uniq_first, counts = np.unique(hashes.of(n), return_index=True, return_counts=True)[1:]
            best = int(counts.max())
            i = int(uniq_first[counts == best].min())
            if (int(cum[i + n] - cum[i]) + n - 1) * best / n_chars > frac:
                return f"top_{n}_gram"
        if self.dup_n_grams:
            cl = None
            repeated = None  # positions whose shorter n-gram repeats: the only ones a longer one can
            for n, frac in self.dup_n_grams:
                # a repeated n-gram starts with a repeated shorter one: none at n means none above
                if (repeated is not None and not len(repeated)) or len(ids) - n + 1 <= 1:
                    chars, repeated = 0, np.zeros(0, np.int64)
                else:
                    cl = cum.tolist() if cl is None else cl
                    chars, repeated = self._dup_ngram_chars(hashes.of(n), cl, n, repeated)
                if chars / n_chars > frac:
                    return f"duplicated_{n}_grams"
        return True

    @staticmethod
    def _word_ids(words):
        """Words as int ids (same word, same id) and the running sum of word lengths."""
        vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
        ids = np.fromiter(map(vocab.__getitem__, words), dtype=np.uint64, count=len(words))
        cum = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)), out=cum[1:])
        return ids, cum

    @staticmethod
    def _dup_ngram_chars(h, cl, n, candidates=None):
        """(characters covered by n-grams that repeat an earlier one, counting each word once
        (after a repeated n-gram the scan jumps past it), as datatrove's find_all_duplicate; the
        positions whose n-gram occurs more than once). ``h``: the n-gram hashes by position;
        ``cl``: running sum of word lengths; ``candidates``: the positions whose shorter n-gram
        repeats (None: all). Only the positions whose n-gram occurs more than once are visited:
        the others never repeat."""
        cand = np.arange(len(h)) if candidates is None else candidates[candidates < len(h)]
        hc = h[cand]
        order = np.argsort(hc, kind="stable")
        hs = hc[order]
        same = hs[1:] == hs[:-1]
        if not same.any():  # no n-gram repeats: the usual case
            return 0, np.zeros(0, np.int64)
        mask = np.zeros(len(hc), dtype=bool)
        mask[1:] |= same
        mask[:-1] |= same
        pos = cand[np.sort(order[mask])]
        seen: set = set()
        total = i = 0
        for p, g in zip(pos.tolist(), h[pos].tolist()):
            if p < i:
                continue
            if g in seen:
                total += cl[p + n] - cl[p]
                i = p + n
            else:
                seen.add(g)
                i = p + 1
        return total, pos


class _NGramHashes:
    """64-bit hashes of the word n-grams at every position, built up one n at a time
    (the hash for n extends the one for n - 1)."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        with np.errstate(over="ignore"):
            self.h = {1: ids * _MULT[0]}

    def of(self, n: int) -> np.ndarray:
        if n not in self.h:
            prev = self.of(n - 1)
            m = len(self.ids) - n + 1
            with np.errstate(over="ignore"):
                self.h[n] = prev[:m] * _MULT[1] + self.ids[n - 1:n - 1 + m] + np.uint64(n - 1)
        return self.h[n]


_MULT = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


@register
class GopherQuality(BaseFilter):
    """Gopher quality rules (Rae et al. 2021, A.1.1)."""

    name = "gopher_quality"

    @dataclass
    class Config:
        enabled: bool = True
        min_doc_words: Optional[int] = 50
        max_doc_words: Optional[int] = 100_000
        min_avg_word_length: Optional[float] = 3
        max_avg_word_length: Optional[float] = 10
        max_symbol_word_ratio: Optional[float] = 0.1  # '#' and '...' per word
        max_bullet_lines_ratio: Optional[float] = 0.9
        max_ellipsis_lines_ratio: Optional[float] = 0.3
        min_alpha_words_ratio: Optional[float] = 0.8
        min_stop_words: Optional[int] = 2
        stop_words: list[str] = field(default_factory=lambda: list(GOPHER_STOP_WORDS))

    def __init__(self, config=None, max_samples: int = 100, **kwargs):
        super().__init__(config, max_samples, **kwargs)
        self.stop_words = frozenset(self.cfg.stop_words)

    def filter(self, doc: Document):
        c = self.cfg
        text = doc.text
        words = doc.words
        n_words = len(words)
        counts = Counter(words)  # each distinct word is judged once
        real = [(w, k) for w, k in counts.items() if w.isalpha() or not PUNCTUATION.issuperset(w)]
        n_real = sum(k for _, k in real)
        if c.min_doc_words is not None and n_real < c.min_doc_words:
            return "gopher_short_doc"
        if c.max_doc_words is not None and n_real > c.max_doc_words:
            return "gopher_long_doc"
        avg = sum(len(w) * k for w, k in real) / n_real if n_real else 0.0
        if c.min_avg_word_length is not None and avg < c.min_avg_word_length:
            return "gopher_below_avg_word_length"
        if c.max_avg_word_length is not None and avg > c.max_avg_word_length:
            return "gopher_above_avg_word_length"
        if c.max_symbol_word_ratio is not None:
            if text.count("#") / n_words > c.max_symbol_word_ratio:
                return "gopher_too_many_hashes"
            if (text.count("...") + text.count("…")) / n_words > c.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis"
        lines = text.splitlines()
        if lines and c.max_bullet_lines_ratio is not None:
            bullets = sum(1 for ln in lines if ln.lstrip().startswith(("•", "-")))
            if bullets / len(lines) > c.max_bullet_lines_ratio:
                return "gopher_too_many_bullets"
        if lines and c.max_ellipsis_lines_ratio is not None:
            ell = sum(1 for ln in lines if ln.rstrip().endswith(("...", "…")))
            if ell / len(lines) > c.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis"
        if c.min_alpha_words_ratio is not None:
            alpha = sum(k for w, k in counts.items() if w.isalpha() or any(ch.isalpha() for ch in w))
            if alpha / n_words < c.min_alpha_words_ratio:
                return "gopher_below_alpha_ratio"
        if c.min_stop_words is not None and len(self.stop_words.intersection(counts)) < c.min_stop_words:
            return "gopher_few_stop_words"
        return True


@register
class C4(BaseFilter):
    """C4 rules. Line level: drop lines with a word over ``max_word_length`` characters,
    lines without terminal punctuation (off in FineWeb's recipe), lines with fewer than
    ``min_words_per_line`` words, lines mentioning javascript, lines with cookie/terms
    phrases; wiki citation marks are removed. Document level: drop documents with
    "lorem ipsum", a curly bracket, or fewer than ``min_num_sentences`` sentences left."""

    name = "c4"
    _citation_re = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
    POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")

    @dataclass
    class Config:
        enabled: bool = True
        remove_citations: bool = True
        filter_no_terminal_punct: bool = False  # C4's paper: true; FineWeb: false (it drops too much)
        min_num_sentences: Optional[int] = 5
        min_words_per_line: Optional[int] = 3
        max_word_length: Optional[int] = 1000
        filter_lorem_ipsum: bool = True
        filter_javascript: bool = True
        filter_curly_bracket: bool = True
        filter_policy: bool = True

    def filter(self, doc: Document):
        c = self.cfg
        kept = []
        n_sent = 0
        for line in doc.text.splitlines():
            line = line.strip()
            if not line:
                continue
            lw = line.split()
            if c.max_word_length is not None and len(line) > c.max_word_length and \
                    any(len(w) > c.max_word_length for w in lw):
                continue
            if c.remove_citations and "[" in line:
                line = self._citation_re.sub("", line)
            if c.filter_no_terminal_punct and (not line.endswith((".", "?", "!", '"', "'")) or line.endswith("...")):
                continue
            if c.min_words_per_line is not None and len(lw) < c.min_words_per_line:
                continue
            low = line.lower()
            if c.filter_lorem_ipsum and "lorem ipsum" in low:
                return "c4_lorem_ipsum"
            if c.filter_javascript and "javascript" in low:
                continue
            if c.filter_curly_bracket and "{" in line:
                return "c4_curly_bracket"
            if c.filter_policy and any(p in low for p in self.POLICY):
                continue
            n_sent += count_sentences(line)
            kept.append(line)
        if c.min_num_sentences is not None and n_sent < c.min_num_sentences:
            return "c4_too_few_sentences"
        doc.text = "\n".join(kept).strip()
        return True


@register
class FineWebQuality(BaseFilter):
    """FineWeb's own rules (Penedo et al. 2024, section 3.3)."""

    name = "fineweb_quality"

    @dataclass
    class Config:
        enabled: bool = True
        line_punct_thr: Optional[float] = 0.12
        line_punct_exclude_zero: bool = False
        short_line_thr: Optional[float] = 0.67
        short_line_length: int = 30
        char_duplicates_ratio: Optional[float] = 0.01
        new_line_ratio: Optional[float] = 0.3

    def filter(self, doc: Document):
        c = self.cfg
        text = doc.text
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines:
            return "empty"
        if c.line_punct_thr is not None:
            ratio = sum(1 for ln in lines if ln[-1] in TERMINAL_SET) / len(lines)
            if ratio < c.line_punct_thr and not (ratio == 0 and c.line_punct_exclude_zero):
                return "fineweb_line_punct_ratio"
        if c.short_line_thr is not None:
            ratio = sum(1 for ln in lines if len(ln) <= c.short_line_length) / len(lines)
            if ratio > c.short_line_thr:
                return "fineweb_short_line_ratio"
        if c.char_duplicates_ratio is not None:
            n_chars = len(text) - text.count("\n")
            if n_chars and _dup_count(lines)[1] / n_chars > c.char_duplicates_ratio:
                return "fineweb_char_dup_ratio"
        if c.new_line_ratio is not None:
            words = doc.words
            if words and text.count("\n") / len(words) > c.new_line_ratio:
                return "fineweb_list_ratio"
        return True
