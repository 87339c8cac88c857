"""Heuristic quality filters with their published thresholds.

Each filter is a callable ``f(text) -> (keep, reason, text)``: ``keep`` False drops the
document and ``reason`` names the rule that fired (it is the key in stats.json and the
sample file under removed/); a line-level filter (C4) may return a shortened ``text``.
Every threshold is a constructor argument so the YAML config can tune or disable it
(``null`` disables a single rule).

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

import numpy as np

from .text import count_sentences, split_words

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

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class Filter:
    name = "filter"

    def __call__(self, text: str) -> tuple[bool, str | None, str]:  # pragma: no cover
        raise NotImplementedError


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


class GopherQuality(Filter):
    """Gopher quality rules (Rae et al. 2021, A.1.1)."""

    name = "gopher_quality"

    def __init__(self, min_doc_words=50, max_doc_words=100_000, min_avg_word_length=3, max_avg_word_length=10,
                 max_symbol_word_ratio=0.1, max_bullet_lines_ratio=0.9, max_ellipsis_lines_ratio=0.3,
                 min_alpha_words_ratio=0.8, min_stop_words=2, stop_words=GOPHER_STOP_WORDS):
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg, self.max_avg = min_avg_word_length, max_avg_word_length
        self.max_symbol = max_symbol_word_ratio
        self.max_bullet, self.max_ellipsis = max_bullet_lines_ratio, max_ellipsis_lines_ratio
        self.min_alpha = min_alpha_words_ratio
        self.min_stop_words = min_stop_words
        self.stop_words = frozenset(stop_words)

    def __call__(self, text, words=None):
        words = split_words(text) if words is None else words
        n_words = len(words)
        real = [w for w in words if not PUNCTUATION.issuperset(w)]
        n_real = len(real)
        if self.min_doc_words is not None and n_real < self.min_doc_words:
            return False, "gopher_short_doc", text
        if self.max_doc_words is not None and n_real > self.max_doc_words:
            return False, "gopher_long_doc", text
        avg = sum(map(len, real)) / n_real if n_real else 0.0
        if self.min_avg is not None and avg < self.min_avg:
            return False, "gopher_below_avg_word_length", text
        if self.max_avg is not None and avg > self.max_avg:
            return False, "gopher_above_avg_word_length", text
        if self.max_symbol is not None:
            if text.count("#") / n_words > self.max_symbol:
                return False, "gopher_too_many_hashes", text
            if (text.count("...") + text.count("…")) / n_words > self.max_symbol:
                return False, "gopher_too_many_ellipsis", text
        lines = text.splitlines()
        if lines and self.max_bullet is not None:
            bullets = sum(1 for ln in lines if ln.lstrip().startswith(("•", "-")))
            if bullets / len(lines) > self.max_bullet:
                return False, "gopher_too_many_bullets", text
        if lines and self.max_ellipsis is not None:
            ell = sum(1 for ln in lines if ln.rstrip().endswith(("...", "…")))
            if ell / len(lines) > self.max_ellipsis:
                return False, "gopher_too_many_end_ellipsis", text
        if self.min_alpha is not None:
            alpha = sum(1 for w in words if any(c.isalpha() for c in w))
            if alpha / n_words < self.min_alpha:
                return False, "gopher_below_alpha_ratio", text
        if self.min_stop_words is not None and len(self.stop_words.intersection(words)) < self.min_stop_words:
            return False, "gopher_few_stop_words", text
        return True, None, text


class GopherRepetition(Filter):
    """Gopher repetition rules (Rae et al. 2021, table A1)."""

    name = "gopher_repetition"
    _para_re = re.compile(r"\n{2,}")
    _line_re = re.compile(r"\n+")

    def __init__(self, dup_line_frac=0.3, dup_para_frac=0.3, dup_line_char_frac=0.2, dup_para_char_frac=0.2,
                 top_n_grams=((2, 0.2), (3, 0.18), (4, 0.16)),
                 dup_n_grams=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))):
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_n_grams = [tuple(x) for x in (top_n_grams or ())]
        self.dup_n_grams = [tuple(x) for x in (dup_n_grams or ())]

    def __call__(self, text, words=None):
        if not text:
            return False, "empty", text
        n_chars = len(text)
        paras = self._para_re.split(text.strip())
        n_dup, dup_chars = _dup_count(paras)
        if self.dup_para_frac is not None and n_dup / len(paras) > self.dup_para_frac:
            return False, "dup_para_frac", text
        if self.dup_para_char_frac is not None and dup_chars / n_chars > self.dup_para_char_frac:
            return False, "dup_para_char_frac", text
        lines = self._line_re.split(text)
        n_dup, dup_chars = _dup_count(lines)
        if self.dup_line_frac is not None and n_dup / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac", text
        if self.dup_line_char_frac is not None and dup_chars / n_chars > self.dup_line_char_frac:
            return False, "dup_line_char_frac", text
        words = split_words(text) if words is None else words
        for n, frac in self.top_n_grams:
            if len(words) < n:
                continue
            grams = Counter(zip(*(words[i:] for i in range(n))))
            gram, count = grams.most_common(1)[0]
            # characters of the n-gram written with single spaces, times its count
            if (sum(map(len, gram)) + n - 1) * count / n_chars > frac:
                return False, f"top_{n}_gram", text
        if self.dup_n_grams:
            ids, cum = self._word_ids(words)
            none_below = False
            for n, frac in sorted(self.dup_n_grams):
                # a repeated n-gram contains a repeated shorter one: none at n means none above
                chars = 0 if none_below else self._dup_ngram_chars(ids, cum, n)
                none_below = none_below or chars == 0
                if chars / n_chars > frac:
                    return False, f"duplicated_{n}_grams", text
        return True, None, text

    @staticmethod
    def _word_ids(words):
        """Words as int ids (same word, same id) and the running sum of word lengths."""
        vocab: dict = {}
        ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.uint64, count=len(words))
        cum = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)), out=cum[1:])
        return ids, cum

    @staticmethod
    def _dup_ngram_chars(ids, cum, n):
        """Characters covered by n-grams that repeat an earlier one, counting each word once
        (after a repeated n-gram the scan jumps past it)."""
        m = len(ids) - n + 1
        if m <= 1:
            return 0
        with np.errstate(over="ignore"):
            h = ids[:m] * _MULT[0]
            for j in range(1, n):
                h = h * _MULT[1] + ids[j:j + m] + np.uint64(j)
        if len(np.unique(h)) == m:  # no n-gram repeats: the usual case
            return 0
        hl = h.tolist()
        cl = cum.tolist()
        seen: set = set()
        total = i = 0
        while i < m:
            g = hl[i]
            if g in seen:
                total += cl[i + n] - cl[i]
                i += n
            else:
                seen.add(g)
                i += 1
        return total


_MULT = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


class C4(Filter):
    """C4 rules. Line level: drop lines with a word over ``max_word_length`` characters,
    lines without terminal punctuation (off in FineWeb's recipe), lines with fewer than
    ``min_words_per_line`` words, lines mentioning javascript, lines with cookie/terms
    phrases; wiki citation marks are removed. Document level: drop documents with
    "lorem ipsum", a curly bracket, or fewer than ``min_num_sentences`` sentences left."""

    name = "c4"
    _citation_re = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
    POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")

    def __init__(self, remove_citations=True, filter_no_terminal_punct=True, min_num_sentences=5,
                 min_words_per_line=3, max_word_length=1000, filter_lorem_ipsum=True, filter_javascript=True,
                 filter_curly_bracket=True, filter_policy=True):
        self.remove_citations = remove_citations
        self.no_terminal = filter_no_terminal_punct
        self.min_sent = min_num_sentences
        self.min_words_line = min_words_per_line
        self.max_word_len = max_word_length
        self.lorem, self.js, self.curly, self.policy = filter_lorem_ipsum, filter_javascript, filter_curly_bracket, filter_policy

    def __call__(self, text, words=None):
        kept = []
        n_sent = 0
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            lw = line.split()
            if self.max_word_len is not None and any(len(w) > self.max_word_len for w in lw):
                continue
            if self.remove_citations and "[" in line:
                line = self._citation_re.sub("", line)
            if self.no_terminal and (not line.endswith((".", "?", "!", '"', "'")) or line.endswith("...")):
                continue
            if self.min_words_line is not None and len(lw) < self.min_words_line:
                continue
            low = line.lower()
            if self.lorem and "lorem ipsum" in low:
                return False, "c4_lorem_ipsum", text
            if self.js and "javascript" in low:
                continue
            if self.curly and "{" in line:
                return False, "c4_curly_bracket", text
            if self.policy and any(p in low for p in self.POLICY):
                continue
            n_sent += count_sentences(line)
            kept.append(line)
        if self.min_sent is not None and n_sent < self.min_sent:
            return False, "c4_too_few_sentences", text
        return True, None, "\n".join(kept).strip()


class FineWebQuality(Filter):
    """FineWeb's own rules (Penedo et al. 2024, section 3.3)."""

    name = "fineweb_quality"

    def __init__(self, line_punct_thr=0.12, line_punct_exclude_zero=False, short_line_thr=0.67,
                 short_line_length=30, char_duplicates_ratio=0.01, new_line_ratio=0.3):
        self.line_punct_thr = line_punct_thr
        self.exclude_zero = line_punct_exclude_zero
        self.short_line_thr, self.short_line_length = short_line_thr, short_line_length
        self.char_dup = char_duplicates_ratio
        self.new_line_ratio = new_line_ratio

    def __call__(self, text, words=None):
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines:
            return False, "empty", text
        if self.line_punct_thr is not None:
            ratio = sum(1 for ln in lines if ln.endswith(TERMINAL_PUNCTUATION)) / len(lines)
            if ratio < self.line_punct_thr and not (ratio == 0 and self.exclude_zero):
                return False, "fineweb_line_punct_ratio", text
        if self.short_line_thr is not None:
            ratio = sum(1 for ln in lines if len(ln) <= self.short_line_length) / len(lines)
            if ratio > self.short_line_thr:
                return False, "fineweb_short_line_ratio", text
        if self.char_dup is not None:
            n_chars = len(text) - text.count("\n")
            if n_chars and _dup_count(lines)[1] / n_chars > self.char_dup:
                return False, "fineweb_char_dup_ratio", text
        if self.new_line_ratio is not None:
            words = split_words(text) if words is None else words
            if words and text.count("\n") / len(words) > self.new_line_ratio:
                return False, "fineweb_list_ratio", text
        return True, None, text


FILTERS = {cls.name: cls for cls in (GopherRepetition, GopherQuality, C4, FineWebQuality)}
