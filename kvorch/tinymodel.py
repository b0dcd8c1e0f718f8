"""A tiny random Llama with a locally trained tokenizer: a model vLLM can serve, made without a download.

    python -m kvorch.tinymodel OUT_DIR [--layers 2] [--hidden 128] [--vocab 4096] [--seed 0]
                                       [--dtype bfloat16|float32] [--max-pos 4096] [--force]

Writes into OUT_DIR (a Hugging Face model directory: `--model OUT_DIR` for vLLM):
  config.json, generation_config.json, model.safetensors   LlamaForCausalLM, random weights
  tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ chat_template.jinja where
  transformers writes one)                                 byte-level BPE trained here, chat template
  kvorch-tinymodel.json                                    the parameters and file hashes (marker)

Nothing is downloaded: the training text is generated from a fixed word list and the seed, the
weights are drawn from a seeded torch.Generator in sorted parameter order (so they do not depend on
how a transformers version initialises a model). Same arguments → byte-identical files. Running it
again with the same arguments is a no-op (the marker file matches); other arguments or --force
rebuild the directory (written beside it, then swapped in).

Needs torch, transformers, tokenizers and safetensors, which vLLM brings along.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

MARKER = "kvorch-tinymodel.json"
FORMAT_VERSION = 1

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS]

# A plain chat template (Jinja, as Hugging Face tokenizers use): role tags, then the text.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Fixed word list for the training text (no dependence on what files a machine has).
_WORDS = [
    "the", "of", "and", "to", "in", "is", "was", "for", "that", "on", "as", "with", "by", "it",
    "at", "from", "his", "an", "were", "are", "which", "this", "be", "or", "has", "had", "not",
    "but", "one", "their", "they", "have", "all", "its", "new", "more", "other", "after", "first",
    "two", "been", "who", "when", "would", "there", "also", "into", "time", "she", "only", "can",
    "year", "than", "some", "over", "out", "about", "most", "then", "years", "him", "these", "may",
    "such", "state", "many", "world", "up", "used", "use", "where", "through", "city", "during",
    "between", "while", "each", "well", "both", "made", "during", "under", "any", "three", "part",
    "later", "now", "same", "like", "what", "people", "could", "before", "since", "including",
    "most", "known", "work", "several", "school", "did", "however", "second", "should", "team",
    "number", "system", "name", "found", "our", "because", "cache", "server", "model", "token",
    "prompt", "request", "engine", "worker", "controller", "memory", "chunk", "prefix", "reuse",
    "store", "retrieve", "lookup", "layer", "attention", "decode", "prefill", "latency",
    "throughput", "cluster", "host", "port", "metric", "value", "question", "answer", "document",
    "section", "paragraph", "chapter", "history", "science", "music", "river", "mountain",
    "garden", "water", "light", "house", "family", "friend", "market", "energy", "power",
    "network", "signal", "report", "result", "method", "design", "north", "south", "east", "west",
    "morning", "evening", "winter", "summer", "spring", "autumn", "green", "blue", "red", "yellow",
    "small", "large", "early", "late", "quick", "slow", "bright", "dark", "simple", "complex",
    "ancient", "modern", "public", "private", "local", "global"
]

_PUNCT = [".", ",", ";", ":", "?", "!"]


def _training_text(seed: int, n_lines: int = 6000) -> list[str]:
    """Deterministic English-like text plus made-up words, numbers and code-ish lines.

    Made-up syllable words give the BPE trainer enough distinct pairs to fill a few thousand
    merges; the fixed words make ordinary prompts tokenise compactly.
    """
    rng = random.Random(f"kvorch-tinymodel-text-{seed}")
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v",
              "w", "z", "br", "ch", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "io", "ou", "oo", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck", "rt", "x"]
    made_up = []
    for _ in range(1500):
        made_up.append("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                               for _ in range(rng.randint(1, 3))))
    lines = []
    for i in range(n_lines):
        kind = i % 10
        if kind == 9:
            a, b = rng.choice(made_up), rng.choice(_WORDS)
            lines.append(f"def {a}_{b}(x, y={rng.randint(0, 999)}):\n    return x + {rng.random():.4f} * y")
            continue
        words = []
        for _ in range(rng.randint(6, 24)):
            r = rng.random()
            if r < 0.62:
                words.append(rng.choice(_WORDS))
            elif r < 0.92:
                words.append(rng.choice(made_up))
            else:
                words.append(str(rng.randint(0, 10 ** rng.randint(1, 5))))
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        sentence = " ".join(words) + rng.choice(_PUNCT)
        if rng.random() < 0.2:
            sentence = f"Q{rng.randint(1, 99)}: " + sentence
        lines.append(sentence)
    return lines


def build_tokenizer(vocab: int, seed: int):
    """Train a byte-level BPE tokenizer (tokenizers library) on the generated text."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(seed), trainer=trainer)
    return tok


def _fast_tokenizer(tok, max_len: int):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(layers: int, hidden: int, vocab: int, seed: int, dtype: str, max_pos: int,
                bos_id: int, eos_id: int, pad_id: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)          # head_dim 64: a size every vLLM attention backend takes
    kv_heads = heads
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=max_pos,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.02)
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _params(args) -> dict:
    return {"format": FORMAT_VERSION, "layers": args.layers, "hidden": args.hidden,
            "vocab": args.vocab, "seed": args.seed, "dtype": args.dtype, "max_pos": args.max_pos}


def is_built(out: Path, params: dict) -> bool:
    """True when OUT already holds a model made with these parameters (and its files are there)."""
    marker = out / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if data.get("params") != params:
        return False
    return all((out / name).is_file() for name in data.get("files", {}))


def _write(tmp: Path, args) -> dict:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    tok = build_tokenizer(args.vocab, args.seed)
    fast = _fast_tokenizer(tok, args.max_pos)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    fast.save_pretrained(tmp)
    # Keep the chat template in tokenizer_config.json too (newer transformers write it only to
    # chat_template.jinja; older readers look in tokenizer_config.json).
    tc_path = tmp / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = CHAT_TEMPLATE
    # transformers 5 writes "TokenizersBackend", a name transformers 4 does not know; the old
    # name loads the same tokenizer.json in both.
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")

    model = build_model(args.layers, args.hidden, args.vocab, args.seed, args.dtype, args.max_pos,
                        ids[BOS], ids[EOS], ids[PAD])
    model.save_pretrained(tmp, safe_serialization=True)
    gen_cfg = {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    (tmp / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2, sort_keys=True) + "\n")
    return {"tokenizer_size": tok.get_vocab_size(), "special_token_ids": ids}


def make_tiny_model(out_dir: str | os.PathLike, layers: int = 2, hidden: int = 128,
                    vocab: int = 4096, seed: int = 0, dtype: str = "bfloat16",
                    max_pos: int = 4096, force: bool = False) -> Path:
    """Build (or reuse) the tiny model in OUT_DIR; returns its path."""
    args = argparse.Namespace(layers=layers, hidden=hidden, vocab=vocab, seed=seed, dtype=dtype,
                              max_pos=max_pos)
    if hidden % 64 != 0:
        raise ValueError("hidden must be a multiple of 64 (heads of size 64)")
    out = Path(out_dir)
    params = _params(args)
    if not force and is_built(out, params):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        info = _write(tmp, args)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MARKER).write_text(json.dumps({"params": params, "files": files, **info},
                                             indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o755)
        for p in tmp.iterdir():
            p.chmod(0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvorch.tinymodel",
                                 description="Write a tiny random Llama + locally trained tokenizer.")
    ap.add_argument("out_dir")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128, help="multiple of 64")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--max-pos", type=int, default=4096, help="max_position_embeddings")
    ap.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR is up to date")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    t0 = time.monotonic()
    out = Path(args.out_dir)
    params = _params(args)
    if not args.force and is_built(out, params):
        print(f"tinymodel: {out} is up to date ({json.dumps(params)})")
        return 0
    try:
        make_tiny_model(out, args.layers, args.hidden, args.vocab, args.seed, args.dtype,
                        args.max_pos, force=True)
    except ValueError as e:
        print(f"tinymodel: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"tinymodel: {e}; needs torch, transformers, tokenizers and safetensors "
              "(scripts/install-real-engines.sh installs them with vLLM)", file=sys.stderr)
        return 2
    info = json.loads((out / MARKER).read_text())
    print(f"tinymodel: wrote {out} in {time.monotonic() - t0:.1f} s "
          f"(tokenizer {info['tokenizer_size']} tokens; {json.dumps(params)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
