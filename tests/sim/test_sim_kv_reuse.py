"""KV reuse on one simulated engine: chunk hits, short prefixes, vLLM vs LMCache tiers,
reset_prefix_cache, eviction, disk tier, CacheBlend. Real sockets, real subprocesses."""

import time

from sim_helpers import RETRIEVED, STORED, complete, delta, reqid_line
from simproc import HTTP, engine, words


def test_follow_up_hits_shared_whole_chunks(solo):
    base = words(600, "aa")  # 601 tokens with BOS: 2 whole chunks of 256 + a partial one
    complete(solo, base + " first question", rid="reuse-base")
    eid, total, computed, hit, need = reqid_line(solo, "reuse-base")
    assert (hit, need) == (0, 0)
    stored = [m for m in STORED.finditer(solo.log()) if m.group(1) == eid]
    assert stored and stored[0].group(2) == "512"  # the partial tail chunk is not stored

    before = solo.metrics()
    complete(solo, base + " another question entirely", rid="reuse-follow")
    after = solo.metrics()
    eid, total, computed, hit, need = reqid_line(solo, "reuse-follow")
    assert hit == 512 and total == 607  # BOS + 600 + 6 pieces
    assert delta(before, after, "lmcache:num_lookup_hits_total") == 512
    assert delta(before, after, "lmcache:num_lookup_tokens_total") == 607
    # the engine's own prefix cache had it too (blocks of 16): nothing to load from LMCache
    assert computed == 592 and need == 0
    assert delta(before, after, "vllm:prefix_cache_hits_total") == 592


def test_retrieve_path_after_local_reset(solo):
    base = words(600, "ab")
    complete(solo, base + " q", rid="ret-base")
    r = HTTP.post(solo.url + "/reset_prefix_cache", timeout=5)  # vLLM's cache only
    assert r.json() == {"success": True}
    before = solo.metrics()
    body = complete(solo, base + " other", rid="ret-follow")
    after = solo.metrics()
    eid, total, computed, hit, need = reqid_line(solo, "ret-follow")
    assert (computed, hit, need) == (0, 512, 512)
    assert delta(before, after, "lmcache:num_hit_tokens_total") == 512
    assert delta(before, after, "lmcache:num_requested_tokens_total") == 512
    assert delta(before, after, "vllm:external_prefix_cache_hits_total") == 512
    assert delta(before, after, "vllm:prefix_cache_hits_total") == 0
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 512}
    m = [m for m in RETRIEVED.finditer(solo.log()) if m.group(1) == eid]
    assert m and m[0].group(2) == "512" and m[0].group(3) == "512"


def test_prefix_shorter_than_a_chunk_gives_zero_hits(solo):
    shared = words(200, "ac")
    complete(solo, shared + words(300, "ad"), rid="short-base")
    before = solo.metrics()
    complete(solo, shared + words(300, "ae"), rid="short-follow")
    after = solo.metrics()
    assert reqid_line(solo, "short-follow")[3] == 0
    assert delta(before, after, "lmcache:num_lookup_hits_total") == 0


def test_reset_prefix_cache_with_external_empties_everything(solo):
    base = words(600, "af")
    complete(solo, base + " q", rid="rst-base")
    complete(solo, base + " q2", rid="rst-1")
    assert reqid_line(solo, "rst-1")[3] == 512
    r = HTTP.post(solo.url + "/reset_prefix_cache?reset_external=true", timeout=5)
    assert r.status_code == 200 and r.json() == {"success": True}
    before = solo.metrics()
    complete(solo, base + " q3", rid="rst-2")
    after = solo.metrics()
    _, _, computed, hit, need = reqid_line(solo, "rst-2")
    assert (computed, hit, need) == (0, 0, 0)
    assert delta(before, after, "vllm:prefix_cache_hits_total") == 0


def test_cached_prefill_is_faster(solo):
    base = words(1000, "ag") + words(1000, "ah") + words(1000, "ai")

    def ttft(prompt, rid):
        t0 = time.perf_counter()
        with HTTP.stream("POST", solo.url + "/v1/completions", headers={"X-Request-Id": rid},
                          json={"prompt": prompt, "max_tokens": 3, "stream": True}, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    return time.perf_counter() - t0

    cold = ttft(base + " cold", "ttft-cold")
    HTTP.post(solo.url + "/reset_prefix_cache", timeout=5)  # keep LMCache, drop vLLM's cache
    warm = ttft(base + " warm", "ttft-warm")
    assert reqid_line(solo, "ttft-warm")[4] == 2816  # 11 whole chunks
    assert warm < cold * 0.6, (cold, warm)


def test_eviction_under_small_capacity(tmp_path):
    # 1 KiB/token -> a 256-token chunk is 256 KiB; 0.001 GiB holds 4 chunks
    p = engine(tmp_path, "evict", config={"chunk_size": 256, "max_local_cpu_size": 0.001},
               args=["--sim-kv-bytes-per-token", "1024", "--no-enable-prefix-caching"])
    try:
        prompts = [words(600, s) for s in ("ba", "bb", "bc")]  # 2 chunks each: 6 > 4
        for i, pr in enumerate(prompts):
            complete(p, pr + " x", rid=f"ev-{i}")
        m = p.metrics()
        assert m["lmcache:local_cpu_evict_count_total"] >= 2
        assert m["lmcache:local_cache_usage"] <= 0.001 * 1024 ** 3
        complete(p, prompts[0] + " y", rid="ev-old")
        complete(p, prompts[2] + " y", rid="ev-new")
        assert reqid_line(p, "ev-old")[3] == 0  # LRU: the oldest chunks are gone
        assert reqid_line(p, "ev-new")[3] == 512
    finally:
        p.stop()


def test_disk_tier(tmp_path):
    disk = tmp_path / "local_disk"
    p = engine(tmp_path, "disk", config={"chunk_size": 256, "local_cpu": False,
                                         "local_disk": f"file://{disk}/", "max_local_disk_size": 1},
               args=["--no-enable-prefix-caching"])
    try:
        base = words(600, "ca")
        complete(p, base + " x", rid="disk-base")
        files = list(disk.glob("*.kvsim"))
        assert len(files) == 2 and all(f.stat().st_size == 256 * 64 for f in files)
        complete(p, base + " y", rid="disk-follow")
        assert reqid_line(p, "disk-follow")[3:] == (512, 512)
        assert "Retrieved 512 out of 512" in p.log()
    finally:
        p.stop()


def test_cacheblend_reuses_reordered_segments(tmp_path):
    env = {"LMCACHE_CHUNK_SIZE": "256", "LMCACHE_ENABLE_BLENDING": "True",
           "LMCACHE_BLEND_SPECIAL_STR": " # # ", "LMCACHE_USE_LAYERWISE": "True",
           "LMCACHE_BLEND_CHECK_LAYERS": "1", "LMCACHE_BLEND_RECOMPUTE_RATIOS": "0.15",
           "LMCACHE_MAX_LOCAL_CPU_SIZE": "5"}
    p = engine(tmp_path, "blend", env_extra=env, args=["--no-enable-prefix-caching"])
    try:
        log = p.log()
        assert "No LMCache configuration file is set" in log
        assert "Automatically setting save_unfull_chunk=True because enable_blending=True" in log
        sys_, a, b, c = (words(300, s) for s in ("da", "db", "dc", "dd"))
        sep = " # # "

        def ttft(prompt, rid):
            t0 = time.perf_counter()
            complete(p, prompt, rid=rid, max_tokens=1)
            return time.perf_counter() - t0

        t1 = ttft(sep.join([sys_, a, b, c, " what is first"]), "blend-1")
        t2 = ttft(sep.join([sys_, c, a, b, " what is last"]), "blend-2")
        _, total, _, hit, need = reqid_line(p, "blend-2")
        # BOS + the four segments (found in another order). LMCache strips the env value, so the
        # separator is "# #" and each segment keeps its surrounding spaces: a few more tokens.
        assert 301 + 300 * 3 <= hit <= 301 + 300 * 3 + 8 and hit < total
        assert need == hit
        assert t2 < t1 / 1.5, (t1, t2)
    finally:
        p.stop()


def test_save_unfull_chunk_stores_the_tail(tmp_path):
    p = engine(tmp_path, "unfull", config={"chunk_size": 256, "save_unfull_chunk": True},
               args=["--no-enable-prefix-caching"])
    try:
        prompt = words(600, "ea")  # 601 tokens with BOS
        complete(p, prompt, rid="unfull-1")
        eid = reqid_line(p, "unfull-1")[0]
        m = [m for m in STORED.finditer(p.log()) if m.group(1) == eid]
        assert m[0].group(2) == "601" and m[0].group(3) == "601"
        complete(p, prompt, rid="unfull-2")  # the very same prompt: every token hits
        _, total, computed, hit, need = reqid_line(p, "unfull-2")
        assert (total, hit, need) == (601, 601, 600)  # the last token is always recomputed
        complete(p, prompt + " more", rid="unfull-3")  # longer: the partial chunk's key differs
        assert reqid_line(p, "unfull-3")[3] == 512
    finally:
        p.stop()
