"""The simulated KV state: model shape, vLLM's block prefix cache, LMCache's storage tiers."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

GiB = 1024 ** 3

# Known model shapes: (num_layers, num_kv_heads, head_dim), matched on a lower-case substring.
_SHAPES: list[tuple[str, tuple[int, int, int]]] = [
    ("llama-3.1-70b", (80, 8, 128)), ("llama-3-70b", (80, 8, 128)), ("llama-2-70b", (80, 8, 128)),
    ("llama-3.1-8b", (32, 8, 128)), ("llama-3-8b", (32, 8, 128)), ("llama-3.2-1b", (16, 8, 64)),
    ("llama-3.2-3b", (28, 8, 128)), ("llama-2-7b", (32, 32, 128)), ("mistral-7b", (32, 8, 128)),
    ("qwen2.5-7b", (28, 4, 128)), ("qwen2.5-0.5b", (24, 2, 64)), ("qwen3-8b", (36, 8, 128)),
    ("opt-125m", (12, 12, 64)),
]
_DEFAULT_SHAPE = (32, 8, 128)
_DTYPE_BYTES = {"auto": 2, "half": 2, "float16": 2, "bfloat16": 2, "float": 4, "float32": 4}


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int = 2
    source: str = "default"

    @property
    def bytes_per_token(self) -> int:
        """K and V for every layer: 2 * layers * kv_heads * head_dim * dtype bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


def resolve_model_shape(model: str, dtype: str = "auto", override: str | None = None) -> ModelShape:
    """``override`` "L,H,D" wins; then a local model dir's config.json; then the table."""
    db = _DTYPE_BYTES.get(dtype, 2)
    if override:
        layers, heads, dim = (int(x) for x in override.split(","))
        return ModelShape(layers, heads, dim, db, "flag")
    cfg_path = os.path.join(model, "config.json")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as f:
                c = json.load(f)
            layers = int(c["num_hidden_layers"])
            heads = int(c.get("num_key_value_heads") or c["num_attention_heads"])
            dim = int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])
            return ModelShape(layers, heads, dim, db, "config.json")
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            pass
    low = model.lower()
    for pat, shape in _SHAPES:
        if pat in low:
            return ModelShape(*shape, db, "table")
    return ModelShape(*_DEFAULT_SHAPE, db, "default")


def model_max_len(model: str) -> int | None:
    cfg_path = os.path.join(model, "config.json")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as f:
                return int(json.load(f).get("max_position_embeddings"))
        except (OSError, ValueError, TypeError):
            return None
    return None


class PrefixCache:
    """vLLM's automatic prefix cache: full blocks keyed by chained block hashes, LRU-evicted
    when the block pool is full. Blocks held by running requests are counted in ``in_use``."""

    def __init__(self, num_blocks: int, block_size: int, enabled: bool = True):
        self.num_blocks = max(1, num_blocks)
        self.block_size = block_size
        self.enabled = enabled
        self.cached: OrderedDict[str, None] = OrderedDict()
        self.in_use = 0

    def lookup(self, block_keys: list[str], num_tokens: int) -> int:
        """Tokens already computed: the longest cached prefix of blocks, never the last token."""
        if not self.enabled:
            return 0
        max_blocks = (num_tokens - 1) // self.block_size
        n = 0
        for key in block_keys[:max_blocks]:
            if key not in self.cached:
                break
            self.cached.move_to_end(key)
            n += 1
        return n * self.block_size

    def insert(self, block_keys: Iterable[str]) -> None:
        if not self.enabled:
            return
        for key in block_keys:
            if key in self.cached:
                self.cached.move_to_end(key)
            else:
                self.cached[key] = None
        self._evict()

    def _evict(self) -> None:
        free = max(0, self.num_blocks - self.in_use)
        while len(self.cached) > free and self.cached:
            self.cached.popitem(last=False)

    def allocate(self, n_blocks: int) -> None:
        self.in_use += n_blocks
        self._evict()

    def release(self, n_blocks: int) -> None:
        self.in_use = max(0, self.in_use - n_blocks)

    def usage(self) -> float:
        return min(1.0, self.in_use / self.num_blocks)

    def reset(self) -> None:
        self.cached.clear()


@dataclass
class Entry:
    tokens: int
    nbytes: int


class Tier:
    """One LMCache storage tier: key -> Entry, LRU, bounded in bytes."""

    def __init__(self, name: str, capacity_bytes: int,
                 on_evict: Callable[[str, Entry], None] | None = None):
        self.name = name
        self.capacity = capacity_bytes
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.used = 0
        self.on_evict = on_evict
        self.evictions = 0

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def touch(self, key: str) -> None:
        self.entries.move_to_end(key)

    def put(self, key: str, entry: Entry) -> list[str]:
        """Insert (or refresh); returns the keys evicted to make room. An entry larger
        than the whole tier is not stored (returns [key] as 'evicted')."""
        if key in self.entries:
            self.entries.move_to_end(key)
            return []
        if entry.nbytes > self.capacity:
            return [key]
        evicted = []
        while self.used + entry.nbytes > self.capacity and self.entries:
            k, e = self.entries.popitem(last=False)
            self.used -= e.nbytes
            self.evictions += 1
            evicted.append(k)
            if self.on_evict:
                self.on_evict(k, e)
        self.entries[key] = entry
        self.used += entry.nbytes
        return evicted

    def remove(self, key: str) -> Entry | None:
        e = self.entries.pop(key, None)
        if e is not None:
            self.used -= e.nbytes
        return e

    def clear(self) -> int:
        n = sum(e.tokens for e in self.entries.values())
        if self.on_evict:
            for k, e in list(self.entries.items()):
                self.on_evict(k, e)
        self.entries.clear()
        self.used = 0
        return n


def wire_payload(key: str, nbytes: int) -> bytes:
    """Deterministic bytes standing for a chunk's KV on the wire or on disk."""
    seed = bytes.fromhex(key) if len(key) % 2 == 0 else key.encode()
    reps = nbytes // len(seed) + 1
    return (seed * reps)[:nbytes]


class DiskDir:
    """Files of the disk tier: ``<dir>/<key>.kvsim`` (only files with that suffix are touched)."""

    SUFFIX = ".kvsim"

    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(self.SUFFIX):
                try:
                    os.unlink(os.path.join(path, name))
                except OSError:
                    pass

    def file(self, key: str) -> str:
        return os.path.join(self.path, key + self.SUFFIX)

    def write(self, key: str, data: bytes) -> None:
        with open(self.file(key), "wb") as f:
            f.write(data)

    def read(self, key: str) -> bytes | None:
        try:
            with open(self.file(key), "rb") as f:
                return f.read()
        except OSError:
            return None

    def delete(self, key: str) -> None:
        try:
            os.unlink(self.file(key))
        except OSError:
            pass
