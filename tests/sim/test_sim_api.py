"""The OpenAI-compatible API of the simulated engine, raw and through the official client."""

import json
import re

import httpx
import openai
import pytest
from sim_helpers import STORED, complete, reqid_line
from simproc import HTTP, MODEL, words


def test_models_version_health(solo):
    assert HTTP.get(solo.url + "/health").status_code == 200
    v = HTTP.get(solo.url + "/version").json()
    assert v["version"] == "0.32.0" and "kvorch_sim" in v
    data = HTTP.get(solo.url + "/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["llama", MODEL]
    assert data["data"][0]["max_model_len"] == 4096 and data["data"][0]["owned_by"] == "vllm"


def test_request_id_like_vllm(solo):
    r = HTTP.post(solo.url + "/v1/completions", headers={"X-Request-Id": "trace-42"},
                   json={"prompt": words(300, "ia"), "max_tokens": 2})
    assert r.json()["id"] == "cmpl-trace-42"
    assert r.headers["x-request-id"] == "trace-42"
    eid = reqid_line(solo, "trace-42")[0]
    assert re.fullmatch(r"cmpl-trace-42-0-[0-9a-f]{8}", eid)
    assert any(m.group(1) == eid for m in STORED.finditer(solo.log()))
    r = HTTP.post(solo.url + "/v1/chat/completions", headers={"X-Request-Id": "trace-43"},
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.json()["id"] == "chatcmpl-trace-43"
    assert re.fullmatch(r"chatcmpl-trace-43-[0-9a-f]{8}", reqid_line(solo, "trace-43")[0])
    # without the header: the body's request_id, else a random one
    r = HTTP.post(solo.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1,
                                                       "request_id": "body-id"})
    assert r.json()["id"] == "cmpl-body-id"


def test_sse_streaming_parses_as_openai(solo):
    with HTTP.stream("POST", solo.url + "/v1/completions",
                      json={"prompt": "stream me", "max_tokens": 5, "stream": True,
                            "stream_options": {"include_usage": True}, "ignore_eos": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    text = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert len(text) == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-1]["usage"]["prompt_tokens"] == 4  # BOS, " stream", " me"... as tokenized
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("cmpl-")


def test_errors_in_openai_shape(solo):
    r = HTTP.post(solo.url + "/v1/completions", content=b"{not json",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400 and "json" in err["message"]
    r = HTTP.post(solo.url + "/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert r.status_code == 404
    assert r.json()["error"] == {"message": "The model `gpt-9` does not exist. Valid aliases: "
                                            f"llama, {MODEL}.", "type": "NotFoundError",
                                 "param": "model", "code": 404}
    long = words(1000, "ib") + words(1000, "ic") + words(1000, "id") + words(1000, "ie") + words(200, "if")
    r = HTTP.post(solo.url + "/v1/completions", json={"prompt": long, "max_tokens": 4})
    assert r.status_code == 400
    assert "maximum context length is 4096 tokens" in r.json()["error"]["message"]
    r = HTTP.post(solo.url + "/v1/completions", json={"prompt": "x", "max_tokens": 0})
    assert r.status_code == 400
    assert HTTP.get(solo.url + "/nope").status_code == 404
    assert HTTP.get(solo.url + "/v1/completions").status_code == 405


def test_temperature_zero_is_deterministic(solo):
    a = complete(solo, "the same prompt", max_tokens=8)["choices"][0]["text"]
    b = complete(solo, "the same prompt", max_tokens=8)["choices"][0]["text"]
    assert a == b and len(a) > 0


def test_metrics_have_vllm_and_lmcache_names(solo):
    complete(solo, words(300, "ig"), rid="metrics-1")
    text = HTTP.get(solo.url + "/metrics").text
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:external_prefix_cache_queries_total", "vllm:external_prefix_cache_hits_total",
                 "vllm:request_success_total", "lmcache:num_requested_tokens_total",
                 "lmcache:num_hit_tokens_total", "lmcache:num_lookup_tokens_total",
                 "lmcache:num_lookup_hits_total", "lmcache:num_stored_tokens_total",
                 "lmcache:retrieve_hit_rate", "lmcache:lookup_hit_rate",
                 "lmcache:time_to_retrieve_bucket", "lmcache:time_to_store_bucket",
                 "lmcache:p2p_time_to_transfer_bucket"]:
        assert name in text, name
    assert 'model_name="llama"' in text
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text


def test_unknown_lmcache_key_warns_like_lmcache(solo):
    log = solo.log()
    assert re.search(r"LMCache WARNING: Unknown configuration key: nixl_role \(source: file: "
                     r"\S+solo\.yaml\) \(config_base\.py:212:lmcache\.v1\.config_base\)", log)
    assert "Loading LMCache config file" in log


def test_openai_client(solo):
    client = openai.OpenAI(base_url=solo.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["llama", MODEL]
    c = client.completions.create(model="llama", prompt="hello there", max_tokens=6,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert c.id.startswith("cmpl-") and c.usage.completion_tokens == 6
    assert c.choices[0].finish_reason == "length" and c.choices[0].text
    chat = client.chat.completions.create(model="llama", max_tokens=4,
                                          messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    stream = client.chat.completions.create(model="llama", max_tokens=5, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "stream"}],
                                            extra_body={"ignore_eos": True})
    pieces, usage = [], None
    for ev in stream:
        if ev.choices:
            pieces.append(ev.choices[0].delta.content or "")
        if ev.usage:
            usage = ev.usage
    assert "".join(pieces) and usage.completion_tokens == 5
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="llama", prompt=words(1000, "ih") * 5, max_tokens=1)


def test_queueing_beyond_max_num_seqs(tmp_path):
    import asyncio
    import time

    from simproc import engine

    p = engine(tmp_path, "queue", ktc=None, args=["--max-num-seqs", "1"],
               env_extra={"KVORCH_SIM_PREFILL_MS_PER_TOKEN": "0.5"})
    try:
        async def one(c, i):
            r = await c.post(p.url + "/v1/completions",
                             json={"prompt": words(200, f"q{i}"), "max_tokens": 1})
            return r.status_code

        async def main():
            async with httpx.AsyncClient(timeout=30) as c:
                t0 = time.perf_counter()
                codes = await asyncio.gather(*[one(c, i) for i in range(3)])
                return codes, time.perf_counter() - t0

        codes, elapsed = asyncio.run(main())
        assert codes == [200, 200, 200]
        assert elapsed >= 3 * 0.1  # 3 x 100 ms of prefill, one at a time
        m = p.metrics()
        assert m["vllm:request_queue_time_seconds_sum"] >= 0.1 + 0.2 - 0.05
        assert "lmcache:num_hit_tokens_total" not in m  # no connector: no LMCache metrics
    finally:
        p.stop()


def test_client_disconnect_frees_the_slot(solo):
    import time

    before = solo.metrics()
    with HTTP.stream("POST", solo.url + "/v1/completions", timeout=10,
                      json={"prompt": "go on", "max_tokens": 3000, "ignore_eos": True,
                            "stream": True}) as r:
        it = r.iter_lines()
        next(it)
    deadline = time.time() + 3
    while True:
        m = solo.metrics()
        aborted = m.get('vllm:request_success_total{engine="0",finished_reason="abort",'
                        'model_name="llama"}', 0) - before.get(
            'vllm:request_success_total{engine="0",finished_reason="abort",model_name="llama"}', 0)
        if (m["vllm:num_requests_running"] == 0 and aborted == 1) or time.time() > deadline:
            break
        time.sleep(0.05)
    assert m["vllm:num_requests_running"] == 0 and aborted == 1


def test_enable_log_requests_lines(tmp_path):
    from simproc import engine

    p = engine(tmp_path, "logreq", ktc=None, args=["--enable-log-requests"])
    try:
        HTTP.post(p.url + "/v1/completions", headers={"X-Request-Id": "lr-1"},
                  json={"prompt": "x", "max_tokens": 2})
        log = p.log()
        assert re.search(r"Received request cmpl-lr-1-0: params: SamplingParams\(n=1, ", log)
        assert re.search(r"Added request cmpl-lr-1-0-[0-9a-f]{8}\.", log)
    finally:
        p.stop()
