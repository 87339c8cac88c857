"""Text helpers shared by the cleaning stages: word and sentence splitting, unicode repair.

The word splitter reproduces the tokens of spaCy's blank English tokenizer (the one the
published filter code runs) closely enough that the filters take the same decisions:
punctuation marks are tokens of their own, ``don't`` → ``do`` ``n't``, ``it's`` → ``it``
``'s``, hyphenated words are split, while numbers (``3.5``, ``1,000``), abbreviations
(``e.g.``, ``U.S.``) and URLs stay whole. It is several times faster than spaCy.
"""
from __future__ import annotations

import re
import unicodedata

# The word splitter follows the algorithm of spaCy's rule-based tokenizer, with English
# rules written out here: split the text at whitespace; for each piece, look up the
# exceptions (contractions, abbreviations), else peel off prefix and suffix punctuation
# until none is left, then split what remains at infixes (hyphens between letters, "/",
# ":" or "=" between letters, commas between letters, "..." anywhere).
def _icons() -> str:
    """A regex class of the "other symbol" characters (emoji, pictographs; not °), which spaCy
    splits off as tokens of their own wherever they stand."""
    import regex

    chars = regex.findall(r"\p{So}", "".join(chr(c) for c in range(0x20000) if not 0xD800 <= c < 0xE000))
    ranges: list[list[int]] = []
    for c in (ord(x) for x in chars if x != "°"):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "[" + "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                         for a, b in ranges) + "]"


_ICON = _icons()
# spaCy's punctuation class (a "." after one of these is split off) and its CJK/Arabic marks
_PUNCT_BEFORE_DOT = frozenset("%²-+'\"”“`‘´’)]}…,:;!?¿؟¡([{<>_#*&。？！，、；：～·।،۔؛٪")
_PREFIX_RE = re.compile(r"""^(?:\.\.+|…+|\+(?![0-9])|[§%=—–()\[\]{}<>"“”‘’`´«»„‚,:;!?¿¡_#*&~·$£€¥'。？！，、；：～؟]|"""
                        + _ICON + ")")
_SUFFIX_RE = re.compile(r"""(?:\.\.+|…+|(?<=.)['’][sS]|[,:;!?()\[\]{}<>_#*&~"”“`‘´’'»«%—–°。？！，、；：～·।،۔؛٪]"""
                        r"""|(?<=[0-9])\+|""" + _ICON + ")$")
_INFIX_RE = re.compile(
    _ICON + r"""|\.\.+|…|(?<=[0-9])[+\-*^](?=[0-9-])|(?<=[^\W\d_]),(?=[^\W\d_])"""
    r"""|(?<=[^\W_])(?:---|--|-|–|—|~)(?=[^\W\d_])|(?<=[^\W_])[:<>=/](?=[^\W\d_])"""
    r"""|(?<=[a-z'"”“`‘´’])\.(?=[A-Z])"""
)
_URL_RE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|www\.)\S+$", re.IGNORECASE)


EMOTICONS = r"""
(¬_¬) (._.) ^_^ :-X (╯°□°）╯︵┻━┻ :( =[ :'-( :-D :-)) O.o :] V_V :(( o_0 o_o (-; ;_; -_- ]= <.< :-3 ^___^ XDD
o.o :-p :') =/ [: :-) ><(((*> :X XD >:( (-: <33 :((( 0_o O_O :o) (= :-))) ;-D (o: o.O ಠ_ಠ (>_<) (; :-O =) :x 0.o
:-P ಠ︵ಠ (^_^) :O :)) >.< -__- =( 0_0 [-: xD :* O.O (-_-) :0 :-] o_O ): :1 8-D :-* :-(( :} :p 8-) >:o (ಠ_ಠ) 8)
:'( :> :-x ._. ;) :| =3 ¯\(ツ)/¯ (*_*) 0.0 V.V </3 :D (-8 O_o @_@ :-> :-( :))) :-/ :/ =] xDD v_v <333 :'-) v.v
<3 ^__^ )-: :-} :P (: [= o.0 :o :) :3 8D :-o :-((( :() ;-) =| =D >.> :-| :-0 ;D
"""


def _build_exceptions() -> dict[str, list[str]]:
    exc: dict[str, list[str]] = {}
    neg = ["do", "does", "did", "is", "are", "was", "were", "have", "has", "had", "could", "would", "should",
           "must", "might", "need", "dare", "may", "ought"]
    pairs = [(v + "n't", [v, "n't"]) for v in neg]
    pairs += [("can't", ["ca", "n't"]), ("won't", ["wo", "n't"]), ("shan't", ["sha", "n't"]),
              ("ain't", ["ai", "n't"]), ("cannot", ["can", "not"])]
    for pron in ["i", "you", "he", "she", "it", "we", "they", "that", "there", "who", "what"]:
        for tail in ["'ll", "'d", "'ve", "'re", "'m"]:
            pairs.append((pron + tail, [pron, tail]))
    for word, parts in pairs:
        for apo in ("'", "’"):
            w = word.replace("'", apo)
            p = [x.replace("'", apo) for x in parts]
            exc[w] = p
            exc[w[0].upper() + w[1:]] = [p[0][0].upper() + p[0][1:]] + p[1:]
    for word, parts in (("id", ["i", "d"]), ("im", ["i", "m"]), ("ive", ["i", "ve"]), ("dont", ["do", "nt"]),
                        ("doesnt", ["does", "nt"]), ("didnt", ["did", "nt"]), ("isnt", ["is", "nt"]),
                        ("cant", ["ca", "nt"]), ("wont", ["wo", "nt"]), ("youre", ["you", "re"]),
                        ("and/or", ["and/or"])):
        exc[word] = parts
        exc[word[0].upper() + word[1:]] = [parts[0][0].upper() + parts[0][1:]] + parts[1:]
    # spaCy's base exceptions: single letters with a period, quote marks and contractions
    # standing alone, emoticons (data from spacy/lang/tokenizer_exceptions.py, MIT): one token each
    alone = ("d", "ll", "re", "s", "S", "em", "cos", "coz", "cuz", "Cos", "Coz", "Cuz")
    for tok in [c + "." for c in "abcdefghijklmnopqrstuvwxyzäöü"] + ["''", "’’", "C++"] + \
            [a + t for a in "'’" for t in alone] + EMOTICONS.split():
        exc[tok] = [tok]
    for ab in ["e.g.", "i.e.", "Mr.", "Mrs.", "Ms.", "Dr.", "St.", "vs.", "Jr.", "Sr.", "Inc.", "Ltd.", "Co.",
               "Corp.", "a.m.", "p.m.", "No.", "Prof.", "Mt.", "Jan.", "Feb.", "Aug.", "Sept.", "Oct.", "Nov.",
               "Dec.", "U.S.", "U.K."]:
        exc[ab] = [ab]
    return exc


_EXC = _build_exceptions()


def _split_piece(piece: str, out: list) -> None:
    suffixes = []
    while piece:
        ex = _EXC.get(piece)
        if ex is not None:
            out.extend(ex)
            piece = ""
            break
        if _URL_RE.match(piece) and piece[-1] not in ".,;:!?)\"'":
            break
        m = _PREFIX_RE.match(piece)
        if m and m.end() < len(piece) + (1 if len(piece) == 1 else 0):
            out.append(m.group())
            piece = piece[m.end():]
            continue
        if len(piece) > 1:
            if piece[-1] == "." and not piece.endswith(".."):
                prev = piece[-2]
                if prev.islower() or prev.isdigit() or prev in _PUNCT_BEFORE_DOT or \
                        (prev.isupper() and len(piece) > 2 and piece[-3].isupper()):
                    suffixes.append(".")
                    piece = piece[:-1]
                    continue
            m = _SUFFIX_RE.search(piece)
            if m and m.start() > 0:
                suffixes.append(m.group())
                piece = piece[:m.start()]
                continue
        break
    if piece:
        if _URL_RE.match(piece) or piece.isalnum():
            out.append(piece)
        else:
            start = 0
            for m in _INFIX_RE.finditer(piece):
                if m.start() > start:
                    out.append(piece[start:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                start = m.end()
            if start < len(piece):
                out.append(piece[start:])
    out.extend(reversed(suffixes))


_PIECES: dict[str, tuple[str, ...]] = {}  # piece -> its tokens: web text repeats its odd pieces
_PIECES_MAX = 200_000


_CLOSE = frozenset(',;:!?)"')  # one of these after a word is a token of its own
_OPEN = frozenset('("')  # ... and one of these before it


def _simple_piece(piece: str) -> tuple[str, ...] | None:
    """The tokens of the commonest pieces that are not words, without the rules: a word with one
    closing mark (``word,`` ``word)``), a word ending a sentence (``word.`` after a lower-case
    letter or a digit) or a word after an opening mark (``(word``); None for anything else.
    These are exactly what `_split_piece` gives them (a test checks it on real text)."""
    if piece in _EXC:
        return None
    head, last = piece[:-1], piece[-1]
    if head.isalnum() and head not in _EXC:
        if last in _CLOSE or (last == "." and (head[-1].islower() or head[-1].isdigit())):
            return head, last
    first, tail = piece[0], piece[1:]
    if first in _OPEN and tail.isalnum() and tail not in _EXC:
        return first, tail
    return None


def _piece_tokens(piece: str) -> tuple[str, ...]:
    toks = _simple_piece(piece)
    if toks is None:
        tmp: list[str] = []
        _split_piece(piece, tmp)
        toks = tuple(tmp)
    return toks


def split_words(text: str) -> list[str]:
    """Words and punctuation tokens of ``text`` (see the module doc)."""
    out: list[str] = []
    append, extend = out.append, out.extend
    cache = _PIECES
    for piece in text.split():
        if piece.isalnum() and piece not in _EXC:
            append(piece)
            continue
        toks = cache.get(piece)
        if toks is None:
            toks = _piece_tokens(piece)
            if len(cache) >= _PIECES_MAX:
                cache.clear()
            cache[piece] = toks
        extend(toks)
    return out


_ABBREV = {"mr", "mrs", "ms", "dr", "st", "vs", "prof", "inc", "ltd", "jr", "sr", "no", "fig", "etc", "approx"}
# (?<!\S): a match can only begin where a word begins (the lazy \S*? reaches any later start
# in the word from there), so the engine does not retry at every character of every word
_SENT_END_RE = re.compile(r"(?<!\S)(\S*?)([.!?]+|…)[\"'”’)\]]*\s+(?=\S)")


def count_sentences(line: str) -> int:
    """Sentences in one line: breaks after . ! ? (or …) followed by space and more text,
    except after single-letter initials and common abbreviations (Mr., Dr., etc.)."""
    n = 1
    for m in _SENT_END_RE.finditer(line):
        word = m.group(1).lower().rstrip(".")
        if m.group(2) == "." and (len(word) == 1 and word.isalpha() or word in _ABBREV or "." in word):
            continue
        n += 1
    return n


def fix_unicode(text: str, fix: bool = True, normalization: str | None = "NFC") -> str:
    """Repair mojibake and other unicode damage with ftfy, then normalise (NFC by default)."""
    if fix:
        import ftfy

        # ftfy's own normalisation is NFC too, but we do it below so it is done even when
        # fix=False; its other defaults (uncurl quotes off, etc.) keep the text as written.
        text = ftfy.fix_text(text, normalization=None, uncurl_quotes=False, fix_latin_ligatures=False,
                             fix_character_width=False)
    if normalization:
        text = unicodedata.normalize(normalization, text)
    return text


_WS_RE = re.compile(r"\s+")
_PUNCT_RE = re.compile(r"[^\w\s]")


def normalize_for_hash(text: str) -> str:
    """The form exact dedup hashes: NFKC, lower case, punctuation dropped, whitespace runs
    collapsed to one space (so copies that differ only in layout or case match)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCT_RE.sub("", text)
    return _WS_RE.sub(" ", text).strip()


def looks_binary(text: str, max_ratio: float = 0.01) -> bool:
    """True if ``text`` holds a NUL or more than ``max_ratio`` control characters
    (other than tab, newline, carriage return, form feed): bytes that are not text."""
    if "\x00" in text:
        return True
    sample = text[:100_000]
    if not sample:
        return False
    return len(_CTRL_RE.findall(sample)) / len(sample) > max_ratio


_CTRL_RE = re.compile("[\x01-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")
