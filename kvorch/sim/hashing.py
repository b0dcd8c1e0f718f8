"""Prefix-chained hashes of token chunks, seeded like LMCache's: by PYTHONHASHSEED.

LMCache 0.5.6's default ``pre_caching_hash_algorithm: builtin`` chains Python's ``hash()``
from a start value that is random per process unless PYTHONHASHSEED is fixed. So engines
with different (or unset) PYTHONHASHSEED compute different keys for the same tokens and never
share KV: the bug the seeds ran into. The sim reproduces that with blake2b keyed by the seed:
same seed -> same keys across processes; unset or "random" -> random per process.
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping, Sequence

from .tokenizer import token_bytes


def hash_seed(environ: Mapping[str, str] | None = None) -> bytes:
    env = os.environ if environ is None else environ
    value = env.get("PYTHONHASHSEED")
    if value is None or value == "random" or value == "":
        return b"rand:" + os.urandom(16)
    return b"seed:" + value.encode()


def describe_seed(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    value = env.get("PYTHONHASHSEED")
    return "random (unset)" if value in (None, "", "random") else value


def salted_domain(domain: bytes, cache_salt: str = "") -> bytes:
    """The hash domain of a request: vLLM puts ``cache_salt`` into its first block's extra keys
    and LMCache 0.5.6 into every ObjectKey, so a salted request shares no cache with others."""
    return domain + b"|salt:" + cache_salt.encode() if cache_salt else domain


def chain_hashes(tokens: Sequence[int], size: int, seed: bytes, domain: bytes,
                 include_partial: bool = False) -> list[tuple[int, int, str]]:
    """[(start, end, key)] for consecutive pieces of ``size`` tokens; each key covers the whole
    prefix up to ``end``. The trailing partial piece is included only if asked."""
    out = []
    prev = domain + seed
    n = len(tokens)
    full = n - n % size
    ends = list(range(size, full + 1, size))
    if include_partial and full < n:
        ends.append(n)
    start = 0
    for end in ends:
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(token_bytes(tokens[start:end]))
        key = h.hexdigest()
        out.append((start, end, key))
        prev = key.encode()
        start = end
    return out


def segment_hash(tokens: Sequence[int], seed: bytes) -> str:
    """CacheBlend: a segment's key depends on its tokens only, not on its position."""
    h = hashlib.blake2b(b"blend" + seed, digest_size=16)
    h.update(token_bytes(tokens))
    return h.hexdigest()
