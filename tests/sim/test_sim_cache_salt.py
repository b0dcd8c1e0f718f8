"""The simulated engine honours vLLM's per-request cache_salt (it keys the prefix cache and every
LMCache chunk), returns generated token ids on request (return_token_ids), and has a planted fault,
--sim-corrupt-reused-kv, under which an answer served from reused KV differs from the cold one."""

from sim_helpers import complete, reqid_line
from simproc import HTTP, engine, words

LOCAL = {"chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 5}
DETAILS = ["--enable-prompt-tokens-details"]


def _stream_ids(proc, prompt, **kw):
    """Generated token ids from a streamed completion with return_token_ids."""
    ids: list[int] = []
    with HTTP.stream("POST", proc.url + "/v1/completions", timeout=30,
                     json={"prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": True,
                           "return_token_ids": True, **kw}) as r:
        assert r.status_code == 200
        import json
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:]).get("choices", []):
                    ids += c.get("token_ids") or []
    return ids


def test_a_salted_request_shares_no_cache_with_the_unsalted_prompt(tmp_path):
    p = engine(tmp_path, "salt", config=LOCAL, args=DETAILS)
    try:
        text = words(700, "sa")
        complete(p, text, rid="s-first")
        again = complete(p, text, rid="s-again")
        salted = complete(p, text, rid="s-salted", cache_salt="kvorch-cold-1")
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 512
        assert salted["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert reqid_line(p, "s-salted")[3] == 0  # LMCache hit tokens: the chunk keys differ
        assert reqid_line(p, "s-again")[3] >= 512
        same_salt = complete(p, text, rid="s-salted-2", cache_salt="kvorch-cold-1")
        assert same_salt["usage"]["prompt_tokens_details"]["cached_tokens"] >= 512  # the salt is a key, not a bypass
    finally:
        p.stop()


def test_a_bad_cache_salt_is_refused_like_vllm(tmp_path):
    p = engine(tmp_path, "badsalt", config=LOCAL)
    try:
        r = HTTP.post(p.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "cache_salt": "a/b"})
        assert r.status_code == 400 and "cache_salt" in r.text
    finally:
        p.stop()


def test_reused_kv_gives_the_cold_answer_unless_the_fault_is_planted(tmp_path):
    good = engine(tmp_path, "good", config=LOCAL)
    bad = engine(tmp_path, "bad", config=LOCAL, args=["--sim-corrupt-reused-kv", "true"])
    try:
        for p, expect_equal in ((good, True), (bad, False)):
            text = words(700, "ft" if expect_equal else "fu")
            _stream_ids(p, text)                                  # fills the caches
            reused = _stream_ids(p, text)                         # served from them
            cold = _stream_ids(p, text, cache_salt="kvorch-cold")  # computed from scratch
            assert reused and cold
            assert (reused == cold) is expect_equal
    finally:
        good.stop()
        bad.stop()
