"""Prompt generators: deterministic text of about N tokens, prefixes, nonces, blend segments."""

from __future__ import annotations

import random
import uuid
from typing import Callable

_WORDS = (
    "the history of artificial intelligence dates back to ancient myths of artisans who built thinking machines "
    "researchers in the nineteen fifties wrote programs that proved theorems played checkers and translated "
    "sentences while funding rose and fell through several winters until statistical learning and large "
    "datasets changed the field neural networks trained on graphics processors learned to recognise images "
    "speech and text and transformer models scaled to billions of parameters serving them efficiently needs "
    "caching of attention keys and values across requests that share a prefix so that repeated context is "
    "computed once stored in memory or on disk and loaded again instead of being recomputed from scratch"
).split()

TokenCounter = Callable[[str], "int | None"]


def text_of_words(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(max(1, n_words))]
    out, sentence = [], []
    for i, w in enumerate(words):
        sentence.append(w)
        if len(sentence) >= 12 or i == len(words) - 1:
            s = " ".join(sentence)
            out.append(s[0].upper() + s[1:] + ".")
            sentence = []
    return " ".join(out)


def text_of_tokens(n_tokens: int, seed: int, count: TokenCounter | None = None) -> str:
    """Prose of at least ``n_tokens`` tokens and as few more as the engine's tokenizer allows
    (when it can count: POST /tokenize); about ``n_tokens`` otherwise."""
    words = max(1, int(n_tokens * 0.75))
    text = text_of_words(words, seed)
    if count is None or (n := count(text)) is None:
        return text
    best: tuple[int, str] | None = (n, text) if n >= n_tokens else None
    lo, hi = (0, words) if n >= n_tokens else (words, None)
    for _ in range(12):  # bisect on the word count
        if hi is None:
            words = words * 2
        else:
            if hi - lo <= 1:
                break
            words = (lo + hi) // 2
        text = text_of_words(words, seed)
        n = count(text) or 0
        if n >= n_tokens:
            hi = words
            if best is None or n < best[0]:
                best = (n, text)
        else:
            lo = words
    return best[1] if best else text


def nonce() -> str:
    return f"nonce:{uuid.uuid4().hex[:12]}\n"


def blend_prompt(system: str, segments: list[str], question: str, separator: str) -> str:
    return separator.join([system, *segments, question])
