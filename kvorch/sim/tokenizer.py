"""A deterministic, dependency-free tokenizer and text generator for the simulated engine.

* The same text gives the same token ids in every process (ids come from blake2b of the piece,
  never from Python's ``hash``), so two engines agree on tokens whatever their PYTHONHASHSEED.
* Roughly one token per 4-5 characters, like a BPE tokenizer on English text: a piece is an
  optional leading space plus up to 5 letters/digits, or one other character, or a run of
  whitespace; ``<|...|>`` special tokens are one token each.
* Completions prompts start with BOS (128000, like Llama 3); chat prompts are rendered with a
  Llama-3-style template (which starts with ``<|begin_of_text|>``).
* Generated text is made of short words whose tokens decode exactly, chosen by a PRNG seeded
  from the prompt (temperature 0 / a ``seed``): same prompt, same output.
"""

from __future__ import annotations

import hashlib
import random
import re
from array import array
from typing import Iterable, Sequence

VOCAB_SIZE = 128256
BOS_ID = 128000
SPECIAL = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eot_id|>": 128009,
}
EOS_ID = 128009

_PIECE_RE = re.compile(r"<\|[a-z_]+\|>| ?[A-Za-z0-9]{1,5}| ?[^\sA-Za-z0-9]|\s+")

_WORDS = (
    "the of and to in is it that for on with as are this be at by from or an have not "
    "cache token chunk layer store load hit miss key value fast model text data node peer "
    "block page query reply share reuse warm cold time batch queue run end start step path "
    "host port role seed hash read write copy move send get set put keep free size byte "
    "each all some many more less one two three four five six seven eight nine ten first "
    "next last same other new old good high low long short small large real "
    "when then than so if but yes no can will may must should could would "
    "it we you they he she our your their its his her my me us them"
).split()
_PUNCT = [".", ",", ";"]


def _stable_id(piece: str) -> int:
    h = hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest()
    return 1000 + int.from_bytes(h, "little") % (BOS_ID - 1000)


class Tokenizer:
    def __init__(self) -> None:
        self._cache: dict[str, int] = dict(SPECIAL)
        self._decode: dict[int, str] = {v: k for k, v in SPECIAL.items()}
        self.gen_pieces = [" " + w for w in _WORDS] + _PUNCT
        self.gen_ids = [self._id(p) for p in self.gen_pieces]
        for p, i in zip(self.gen_pieces, self.gen_ids):
            self._decode[i] = p

    def _id(self, piece: str) -> int:
        i = self._cache.get(piece)
        if i is None:
            i = _stable_id(piece)
            if len(self._cache) < 500_000:
                self._cache[piece] = i
        return i

    def pieces(self, text: str) -> list[str]:
        return _PIECE_RE.findall(text)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [self._id(p) for p in _PIECE_RE.findall(text)]
        if add_bos:
            ids.insert(0, BOS_ID)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._decode.get(i, "") for i in ids)

    def decode_one(self, i: int) -> str:
        return self._decode.get(i, "")


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """A Llama-3-style chat template. Content may be a string or a list of text parts."""
    out = ["<|begin_of_text|>"]
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append(f"<|start_header_id|>{m.get('role', 'user')}<|end_header_id|>\n\n"
                   f"{content or ''}<|eot_id|>")
    if add_generation_prompt:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


def token_bytes(tokens: Sequence[int]) -> bytes:
    return array("i", tokens).tobytes()


class Generator:
    """Deterministic output tokens for a prompt."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok

    def rng_for(self, prompt: Sequence[int], temperature: float, seed: int | None) -> random.Random:
        if temperature > 0 and seed is None:
            return random.Random()
        h = hashlib.blake2b(token_bytes(prompt[-512:]), digest_size=8)
        if seed is not None:
            h.update(str(seed).encode())
        return random.Random(int.from_bytes(h.digest(), "little"))

    def natural_length(self, rng: random.Random) -> int:
        """Where the simulated model would emit EOS."""
        return rng.randint(12, 48)

    def next_token(self, rng: random.Random, prev: int | None) -> int:
        ids = self.tok.gen_ids
        n_words = len(ids) - len(_PUNCT)
        if prev is not None and prev not in ids[n_words:] and rng.random() < 0.12:
            return ids[n_words + rng.randrange(len(_PUNCT))]
        return ids[rng.randrange(n_words)]
