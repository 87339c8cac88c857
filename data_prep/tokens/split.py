"""The train/valid split: a document goes to the valid split when a keyed hash of its id and
text falls below the valid fraction, so the split depends neither on the order, the number of
workers or tasks, nor on chance; another seed gives another (equally fixed) split."""
from __future__ import annotations

import hashlib
import struct


def split_key(seed: int) -> bytes:
    return struct.pack("<Q", seed & 0xFFFFFFFFFFFFFFFF)


def is_valid_doc(doc_id: str, text: str, valid_fraction: float, key: bytes) -> bool:
    """True when the document belongs to the valid split: a keyed BLAKE2b hash of id and text,
    read as a number in [0, 1), is below valid_fraction."""
    if valid_fraction <= 0:
        return False
    h = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass") + b"\x00" + text.encode("utf-8", "surrogatepass"),
                        digest_size=8, key=key)
    return int.from_bytes(h.digest(), "little") / 2.0**64 < valid_fraction
