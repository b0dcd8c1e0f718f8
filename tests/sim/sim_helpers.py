import re
import time

from simproc import HTTP

REQID = re.compile(r"Reqid: (\S+), Total tokens (\d+), Inference Engine computed tokens: (\d+), "
                   r"LMCache hit tokens: (\d+), need to load: (\d+)")
RETRIEVED = re.compile(r"\[req_id=(\S+)\] Retrieved (\d+) out of (\d+) required tokens")
STORED = re.compile(r"\[req_id=(\S+)\] Stored (\d+) out of total (\d+) tokens")


def complete(proc, prompt, rid=None, max_tokens=4, **kw):
    headers = {"X-Request-Id": rid} if rid else {}
    r = HTTP.post(proc.url + "/v1/completions", headers=headers, timeout=30,
                   json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def reqid_line(proc, rid, timeout=3.0):
    """(engine request id, total, computed, hit, need) of the Reqid line for X-Request-Id rid."""
    deadline = time.time() + timeout
    while True:
        for m in REQID.finditer(proc.log()):
            if m.group(1).startswith(f"cmpl-{rid}-") or m.group(1).startswith(f"chatcmpl-{rid}-"):
                return (m.group(1),) + tuple(int(x) for x in m.groups()[1:])
        if time.time() > deadline:
            raise AssertionError(f"no Reqid line for {rid}:\n{proc.log()[-3000:]}")
        time.sleep(0.02)


def delta(before, after, name):
    return after.get(name, 0.0) - before.get(name, 0.0)
