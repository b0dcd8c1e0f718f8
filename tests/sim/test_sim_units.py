"""In-process checks of the simulator's building blocks (the event loop test uses a socketpair)."""

import asyncio
import time

import pytest

from kvorch.sim.args import parse_args
from kvorch.sim.hashing import chain_hashes, hash_seed
from kvorch.sim.kv import Entry, PrefixCache, Tier, resolve_model_shape
from kvorch.sim.latency import LatencyModel
from kvorch.sim.logfmt import format_lmcache, reqid_line
from kvorch.sim.tokenizer import Generator, Tokenizer, render_chat


def test_tokenizer_is_deterministic_and_bpe_like():
    t = Tokenizer()
    a = t.encode("The internationalization of caches, 2026!")
    assert a == Tokenizer().encode("The internationalization of caches, 2026!")
    assert len(a) == 11  # The|inter|natio|naliz|ation| of| cache|s|,| 2026|!
    ids = [t.gen_ids[3], t.gen_ids[-1]]
    assert t.decode(ids) == t.gen_pieces[3] + t.gen_pieces[-1]
    assert t.encode("hi", add_bos=True)[0] == 128000
    assert render_chat([{"role": "user", "content": "x"}]).startswith("<|begin_of_text|>")
    g = Generator(t)
    r1, r2 = g.rng_for([1, 2, 3], 0.0, None), g.rng_for([1, 2, 3], 0.0, None)
    assert [g.next_token(r1, None) for _ in range(5)] == [g.next_token(r2, None) for _ in range(5)]


def test_chunk_keys_depend_on_seed_and_prefix():
    toks = list(range(600))
    s123 = hash_seed({"PYTHONHASHSEED": "123"})
    k1 = chain_hashes(toks, 256, s123, b"lmcache")
    assert [(s, e) for s, e, _ in k1] == [(0, 256), (256, 512)]
    assert k1 == chain_hashes(toks, 256, hash_seed({"PYTHONHASHSEED": "123"}), b"lmcache")
    assert k1[0][2] != chain_hashes(toks, 256, hash_seed({"PYTHONHASHSEED": "456"}), b"lmcache")[0][2]
    assert hash_seed({}) != hash_seed({})  # unset: random per process, like Python's hash
    other = chain_hashes([7] + toks[1:], 256, s123, b"lmcache")
    assert other[1][2] != k1[1][2]  # the second key covers the whole prefix
    assert chain_hashes(toks, 256, s123, b"lmcache", include_partial=True)[-1][:2] == (512, 600)


def test_tier_is_lru_bounded_in_bytes():
    evicted = []
    t = Tier("cpu", 300, on_evict=lambda k, e: evicted.append(k))
    for k in "abc":
        t.put(k, Entry(1, 100))
    t.touch("a")
    t.put("d", Entry(1, 100))
    assert evicted == ["b"] and set(t.entries) == {"a", "c", "d"} and t.used == 300
    assert t.put("big", Entry(1, 301)) == ["big"] and "big" not in t


def test_prefix_cache_never_counts_the_last_token():
    pc = PrefixCache(100, 16)
    keys = [f"k{i}" for i in range(4)]
    pc.insert(keys)
    assert pc.lookup(keys, 64) == 48
    assert pc.lookup(keys, 65) == 64
    pc.reset()
    assert pc.lookup(keys, 65) == 0


def test_model_shape_and_latency():
    s = resolve_model_shape("meta-llama/Meta-Llama-3.1-8B-Instruct", "bfloat16")
    assert s.bytes_per_token == 131072  # 2 * 32 layers * 8 kv heads * 128 * 2 bytes
    assert resolve_model_shape("x", "float32", "2,4,64").bytes_per_token == 2 * 2 * 4 * 64 * 4
    lat = LatencyModel(load_factor=2.0)
    assert lat.factor(1, 8) == 1.0 and lat.factor(8, 8) == 2.0
    assert lat.prefill_s(1500) > 5 * lat.load_s(1500)


def test_sim_flags_from_env():
    a = parse_args(["--model", "m"], {"KVORCH_SIM_PREFILL_MS_PER_TOKEN": "0.7"})
    assert a.sim_prefill_ms_per_token == 0.7
    a = parse_args(["m", "--sim-prefill-ms-per-token", "0.2"], {"KVORCH_SIM_PREFILL_MS_PER_TOKEN": "0.7"})
    assert a.sim_prefill_ms_per_token == 0.2 and a.model == "m"


def test_log_formats():
    line = format_lmcache("INFO", ("vllm_v1_adapter.py", 1476, "lmcache.integration.vllm.vllm_v1_adapter"),
                          reqid_line("cmpl-x-0-abcdef12", 704, 0, 512, 512), color=False)
    assert line.endswith("LMCache INFO: Reqid: cmpl-x-0-abcdef12, Total tokens 704, Inference Engine "
                         "computed tokens: 0, LMCache hit tokens: 512, need to load: 512 "
                         "(vllm_v1_adapter.py:1476:lmcache.integration.vllm.vllm_v1_adapter)")
    assert line.startswith("[20")


def test_precise_loop_serves_sockets_and_timers_and_never_wakes_early() -> None:
    import socket

    from kvorch.sim.loop import run_precise

    async def main() -> tuple[bytes, list[float]]:
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=a)
        loop = asyncio.get_running_loop()
        loop.call_later(0.002, b.send, b"ping\n")  # data arrives while a 50 ms timer is pending
        got = await asyncio.wait_for(reader.readline(), 0.05)
        slept = []
        for d in (0.0005, 0.003, 0.0107):
            t = time.perf_counter()
            await asyncio.sleep(d)
            slept.append(time.perf_counter() - t - d)
        writer.close()
        b.close()
        return got, slept

    got, late = run_precise(main())
    assert got == b"ping\n"
    assert all(x >= 0 for x in late), late


def test_the_simulator_runs_on_the_precise_selector() -> None:
    import selectors

    from kvorch.sim.loop import run_precise

    async def which() -> str:
        return type(asyncio.get_running_loop()._selector).__name__  # type: ignore[attr-defined]

    if not hasattr(selectors, "EpollSelector"):
        pytest.skip("no epoll on this platform: the default loop is used")
    assert run_precise(which()) == "PreciseEpollSelector"
