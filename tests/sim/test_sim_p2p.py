"""Two engines + the simulated controller: hits come from the peer; seeds must match."""

import time

from sim_helpers import RETRIEVED, complete, delta, reqid_line
from simproc import HTTP, words


def _wait_keys(ctl, instance, n, timeout=3.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ws = HTTP.get(ctl.url + "/controller/workers", params={"instance_id": instance}).json()
        if ws["workers"] and ws["workers"][0]["key_count"] >= n:
            return ws
        time.sleep(0.02)
    raise AssertionError(f"{instance} never reported {n} keys")


def test_workers_registered_in_real_shape(cluster):
    ctl = cluster["ctl"]
    deadline = time.time() + 3
    while True:
        body = HTTP.get(ctl.url + "/controller/workers").json()
        if body["total_count"] == 3 or time.time() > deadline:
            break
        time.sleep(0.02)
    assert body["total_count"] == 3
    w = {x["instance_id"]: x for x in body["workers"]}
    assert set(w) == {"lmcache_instance_a", "lmcache_instance_b", "lmcache_instance_c"}
    a = w["lmcache_instance_a"]
    assert set(a) == {"instance_id", "worker_id", "ip", "port", "peer_init_url",
                      "registration_time", "last_heartbeat_time", "key_count"}
    assert a["ip"] == "127.0.0.1" and a["peer_init_url"].startswith("127.0.0.1:")
    one = HTTP.get(ctl.url + "/controller/workers",
                    params={"instance_id": "lmcache_instance_a", "worker_id": 0}).json()
    assert one["instance_id"] == "lmcache_instance_a"
    assert HTTP.get(ctl.url + "/controller/workers",
                     params={"instance_id": "nope", "worker_id": 0}).status_code == 404
    h = HTTP.post(ctl.url + "/health", json={"instance_id": "lmcache_instance_a"}).json()
    assert h["error_codes"] == {"0": 0} and h["event_id"].startswith("health")
    assert HTTP.post(ctl.url + "/health", json={"instance_id": "nope"}).status_code == 500
    assert HTTP.get(ctl.url + "/health").json() == {"status": "healthy"}
    m = HTTP.get(ctl.url + "/metrics").text
    assert "lmcache:cache_controller_registered_workers_count" in m


def test_second_engine_hits_come_from_the_peer(cluster):
    a, b, ctl = cluster["a"], cluster["b"], cluster["ctl"]
    base = words(700, "pa")  # 701 tokens: 2 whole chunks
    complete(a, base + " on a", rid="p2p-base")
    _wait_keys(ctl, "lmcache_instance_a", 2)
    before = b.metrics()
    complete(b, base + " on b", rid="p2p-follow")
    after = b.metrics()
    eid, total, computed, hit, need = reqid_line(b, "p2p-follow")
    assert (computed, hit, need) == (0, 512, 512)
    assert delta(before, after, "lmcache:num_hit_tokens_total") == 512
    assert delta(before, after, "vllm:external_prefix_cache_hits_total") == 512
    assert delta(before, after, "lmcache:p2p_time_to_transfer_count") == 1
    r = [m for m in RETRIEVED.finditer(b.log()) if m.group(1) == eid]
    assert r and r[0].group(2) == "512"
    # the controller's own lookup (same PYTHONHASHSEED) sees A holding those chunks
    toks = HTTP.post(a.url + "/tokenize", json={"prompt": base}).json()["tokens"]
    layout = HTTP.post(ctl.url + "/lookup", json={"tokens": toks}).json()["layout_info"]
    assert layout["lmcache_instance_a"] == ["LocalCPUBackend", 512]


def test_chunks_fetched_from_the_peer_are_kept_in_the_local_cpu_tier(cluster):
    """LMCache 0.5.6's StorageManager.batched_get writes what the P2P backend returned back into
    LocalCPUBackend: the peer's chunks and the engine's own next chunk then form one local prefix."""
    a, b, ctl = cluster["a"], cluster["b"], cluster["ctl"]
    base = words(700, "pw")  # 2 whole chunks, stored on A
    complete(a, base + " on a", rid="wb-base")
    _wait_keys(ctl, "lmcache_instance_a", 2)
    longer = base + " " + words(300, "pv")  # B: 2 chunks from A, its own 3rd chunk
    complete(b, longer, rid="wb-first")
    assert reqid_line(b, "wb-first")[3] == 512
    before = b.metrics()
    complete(b, longer + " and more", rid="wb-again")
    after = b.metrics()
    assert reqid_line(b, "wb-again")[3] == 768  # one prefix: 2 written-back chunks + B's own
    assert delta(before, after, "lmcache:p2p_time_to_transfer_count") == 0


def test_different_pythonhashseed_shares_nothing(cluster):
    a, c, ctl = cluster["a"], cluster["c"], cluster["ctl"]
    base = words(700, "pb")
    complete(a, base + " on a", rid="seed-base")
    _wait_keys(ctl, "lmcache_instance_a", 4)
    before = c.metrics()
    complete(c, base + " on c", rid="seed-follow")
    after = c.metrics()
    assert reqid_line(c, "seed-follow")[3] == 0
    assert delta(before, after, "lmcache:num_hit_tokens_total") == 0
    assert delta(before, after, "lmcache:num_lookup_hits_total") == 0


def test_controller_clear_forwards_to_worker(cluster):
    a, ctl = cluster["a"], cluster["ctl"]
    complete(a, words(300, "pc") + " x", rid="clear-base")
    r = HTTP.post(ctl.url + "/clear", json={"instance_id": "lmcache_instance_a",
                                              "location": "LocalCPUBackend"}).json()
    assert r["num_tokens"] >= 256 and r["event_id"].startswith("Clear")
    ws = _wait_keys(ctl, "lmcache_instance_a", 0)
    deadline = time.time() + 3
    while ws["workers"][0]["key_count"] and time.time() < deadline:
        time.sleep(0.02)
        ws = HTTP.get(ctl.url + "/controller/workers", params={"instance_id": "lmcache_instance_a"}).json()
    assert ws["workers"][0]["key_count"] == 0
    stats = HTTP.get(ctl.url + "/controller/key-stats").json()
    assert stats["total_worker_count"] == 3
