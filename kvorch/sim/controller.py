"""Simulated LMCache controller, started like ``lmcache_controller`` (0.5.6)::

    PYTHONHASHSEED=123 python -m kvorch.sim.controller --host 127.0.0.1 --port 9000 \\
        --monitor-ports '{"pull": 8300, "reply": 8400}'

Same flags as the real one (``--host --port --monitor-ports --monitor-port
--health-check-interval --lmcache-worker-timeout --config``, extra ``key=value`` parameters
accepted, e.g. ``chunk_size=256`` used by ``/lookup``). It listens on the API port and on the
monitor ports (pull, reply, heartbeat when given). Where the real controller speaks ZMQ on the
monitor ports, the simulated workers speak HTTP/JSON:

* pull port (worker -> controller): ``POST /register``, ``/deregister``, ``/heartbeat``,
  ``/kv_events`` (``{"instance_id", "worker_id", "events": [{"op": "admit"|"evict", "key",
  "location"}]}``);
* reply port (request/reply): ``POST /p2p_lookup`` (``{"instance_id", "keys"}`` -> the peer
  holding the longest run of those chunk keys: ``{"instance_id", "peer_init_url",
  "num_chunks", "location"}``).

API port, like the real one: ``GET /controller/workers`` (``{"workers": [...],
"total_count": N}``, filters ``instance_id``/``worker_id``), ``GET /controller/key-stats``,
``GET /metrics`` (``lmcache:cache_controller_*``), ``POST /health {"instance_id"}`` (asks the
workers on their worker port; ``GET /health`` is accepted too for convenience, where the real
one answers 405), ``POST /lookup {"tokens"}`` (hashes with *this* process's PYTHONHASHSEED,
as the real one does), ``POST /clear {"instance_id", "location"}`` (forwarded to the worker),
``POST /query_worker_info``, ``POST /check_finish``. No ``/env`` (the real one leaks its
environment there). Every route answers on every port the controller binds.

SIGTERM stops it within a second with exit status 143, as the real controller exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from . import http, logfmt
from .hashing import chain_hashes, describe_seed, hash_seed
from .logfmt import LMC_CONTROLLER as _CTL
from .logfmt import LMC_CONTROLLER_MANAGER as _MGR
from .logfmt import LMC_DEREGISTER as _DEREG
from .logfmt import LMC_REGISTER as _REG
from .loop import run_precise


def parse_args(argv=None) -> tuple[argparse.Namespace, dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m kvorch.sim.controller",
                                description="Simulated LMCache controller")
    p.add_argument("--config", type=str, default=None)
    p.add_argument("--host", type=str, default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--monitor-ports", type=json.loads, default=None)
    p.add_argument("--monitor-port", type=int, default=9001)
    p.add_argument("--health-check-interval", type=int, default=-1)
    p.add_argument("--lmcache-worker-timeout", type=int, default=300)
    args, extra = p.parse_known_args(argv)
    params: dict[str, Any] = {}
    for arg in extra:  # like lmcache's parse_command_line_extra_params
        if "=" in arg:
            k, v = arg.split("=", 1)
            k = k.lstrip("-")
            if v.lower() in ("true", "false"):
                params[k] = v.lower() == "true"
            elif v.isdigit():
                params[k] = int(v)
            elif v.replace(".", "", 1).isdigit():
                params[k] = float(v)
            else:
                params[k] = v
    if args.config:
        import yaml
        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
        for key, attr in (("controller_host", "host"), ("controller_port", "port"),
                          ("controller_monitor_ports", "monitor_ports"),
                          ("health_check_interval", "health_check_interval"),
                          ("lmcache_worker_timeout", "lmcache_worker_timeout")):
            if key in cfg and getattr(args, attr) == p.get_default(attr):
                setattr(args, attr, cfg[key])
    mp = args.monitor_ports
    if mp is not None and (not isinstance(mp, dict) or "pull" not in mp):
        p.error("--monitor-ports must be a JSON object with at least 'pull' (and 'reply')")
    return args, params


class Controller:
    def __init__(self, args, params: dict[str, Any], environ=None):
        self.args = args
        self.env = dict(os.environ if environ is None else environ)
        self.log = logfmt.Logger("controller")
        self.seed = hash_seed(self.env)
        self.chunk_size = int(params.get("chunk_size", 256))
        self.workers: dict[tuple[str, int], dict] = {}
        self.kv: dict[str, dict[str, str]] = {}  # key -> {instance_id: location}
        self.inst_keys: dict[str, set[str]] = {}
        self.pull_count = 0
        self.reply_count = 0
        self.servers: list[http.Server] = []
        self.tasks: list[asyncio.Task] = []
        self.registry = r = CollectorRegistry()
        labels = {"controller_host": str(args.host), "controller_port": str(args.port)}
        ln, lv = list(labels), list(labels.values())

        def g(name: str, doc: str):
            return Gauge(name, doc, ln, registry=r, multiprocess_mode="livemostrecent").labels(*lv)

        self.g_keys = g("lmcache:cache_controller_kv_pool_keys_count", "The number of keys in the KV pool")
        self.g_workers = g("lmcache:cache_controller_registered_workers_count",
                           "The total number of registered workers")
        self.g_pull = g("lmcache:cache_controller_pull_socket_message_count",
                        "The total number of messages received on PULL socket")
        self.g_reply = g("lmcache:cache_controller_reply_socket_message_count",
                         "The total number of messages received on REPLY socket")

    # ------------------------------------------------------------------ addresses
    def monitor_urls(self) -> dict[str, str | None]:
        a, mp = self.args, self.args.monitor_ports
        if mp is not None:
            return {"pull": f"{a.host}:{mp['pull']}",
                    "reply": f"{a.host}:{mp['reply']}" if mp.get("reply") else None,
                    "heartbeat": f"{a.host}:{mp['heartbeat']}" if mp.get("heartbeat") else None}
        return {"pull": f"{a.host}:{a.monitor_port}", "reply": None, "heartbeat": None}

    def ports(self) -> list[int]:
        out = [self.args.port]
        for url in self.monitor_urls().values():
            if url:
                port = int(url.rsplit(":", 1)[1])
                if port not in out:
                    out.append(port)
        return out

    def router(self) -> http.Router:
        r = http.Router()
        for path, h in (("/register", self.h_register), ("/deregister", self.h_deregister),
                        ("/heartbeat", self.h_heartbeat), ("/kv_events", self.h_kv_events),
                        ("/p2p_lookup", self.h_p2p_lookup), ("/lookup", self.h_lookup),
                        ("/clear", self.h_clear), ("/query_worker_info", self.h_query_worker_info),
                        ("/check_finish", self.h_check_finish), ("/query_instance", self.h_query_instance)):
            r.post(path, h)
        r.add("*", "/health", self.h_health)
        r.get("/controller/workers", self.h_workers)
        r.get("/controller/key-stats", self.h_key_stats)
        r.get("/metrics", self.h_metrics)
        return r

    @staticmethod
    def _error(status: int, message: str) -> http.Response:
        detail = {404: "Not Found", 405: "Method Not Allowed"}.get(status, message)
        return http.json_response({"detail": detail}, status)

    # ------------------------------------------------------------------ worker -> controller
    def _worker_info(self, key: tuple[str, int], w: dict) -> dict:
        inst, wid = key
        return {"instance_id": inst, "worker_id": wid, "ip": w["ip"], "port": w["port"],
                "peer_init_url": w.get("peer_init_url"),
                "registration_time": w["registration_time"],
                "last_heartbeat_time": w["last_heartbeat_time"],
                "key_count": len(self.inst_keys.get(inst, ()))}

    async def h_register(self, req: http.Request) -> http.Response:
        self.pull_count += 1
        b = req.json()
        key = (str(b["instance_id"]), int(b.get("worker_id", 0)))
        now = time.time()
        if key in self.workers:
            self.log.lmcache("WARNING", _REG, f"Instance-worker {key} already registered, "
                                              f"skip registration")
            self.workers[key]["last_heartbeat_time"] = now
            return http.json_response({"ok": True})
        self.workers[key] = {"ip": b.get("ip", ""), "port": int(b.get("port") or 0),
                             "peer_init_url": b.get("peer_init_url"), "api_url": b.get("api_url"),
                             "registration_time": now, "last_heartbeat_time": now,
                             "last_ok": now}
        self.inst_keys.setdefault(key[0], set())
        url = f"{b.get('ip')}:{b.get('port')}"
        if b.get("peer_init_url") is None:
            self.log.lmcache("INFO", _REG, f"peer init url of {key} is None, only register when "
                                           f"p2p is used.")
        self.log.lmcache("INFO", _REG, f"Registered instance-worker {key} with URL {url}")
        return http.json_response({"ok": True})

    def _drop_instance_keys(self, inst: str) -> None:
        for k in self.inst_keys.pop(inst, set()):
            holders = self.kv.get(k)
            if holders is not None:
                holders.pop(inst, None)
                if not holders:
                    del self.kv[k]

    async def h_deregister(self, req: http.Request) -> http.Response:
        self.pull_count += 1
        b = req.json()
        key = (str(b["instance_id"]), int(b.get("worker_id", 0)))
        if self.workers.pop(key, None) is None:
            self.log.lmcache("WARNING", _DEREG, f"Instance-worker {key} not registered")
            return http.json_response({"ok": False})
        if not any(k[0] == key[0] for k in self.workers):
            self._drop_instance_keys(key[0])
        self.log.lmcache("INFO", _DEREG, f"Deregistered instance-worker {key}")
        return http.json_response({"ok": True})

    async def h_heartbeat(self, req: http.Request) -> http.Response:
        self.pull_count += 1
        b = req.json()
        key = (str(b["instance_id"]), int(b.get("worker_id", 0)))
        w = self.workers.get(key)
        if w is None:
            return http.json_response({"ok": False, "command": "re-register"})
        w["last_heartbeat_time"] = w["last_ok"] = time.time()
        return http.json_response({"ok": True})

    async def h_kv_events(self, req: http.Request) -> http.Response:
        self.pull_count += 1
        b = req.json()
        inst = str(b["instance_id"])
        keys = self.inst_keys.setdefault(inst, set())
        for ev in b.get("events", []):
            k = ev["key"]
            if ev.get("op") == "admit":
                self.kv.setdefault(k, {})[inst] = ev.get("location", "LocalCPUBackend")
                keys.add(k)
            else:
                holders = self.kv.get(k)
                if holders is not None:
                    holders.pop(inst, None)
                    if not holders:
                        del self.kv[k]
                keys.discard(k)
        return http.json_response({"ok": True})

    async def h_p2p_lookup(self, req: http.Request) -> http.Response:
        self.reply_count += 1
        b = req.json()
        me = b.get("instance_id")
        keys = b.get("keys", [])
        best: tuple[int, str | None] = (0, None)
        if keys:
            for inst in self.kv.get(keys[0], {}):
                if inst == me:
                    continue
                held = self.inst_keys.get(inst, set())
                n = 0
                for k in keys:
                    if k not in held:
                        break
                    n += 1
                if n > best[0] and any(w[0] == inst and self.workers[w].get("peer_init_url")
                                       for w in self.workers):
                    best = (n, inst)
        n, inst = best
        if not inst:
            return http.json_response({"num_chunks": 0})
        worker = next(self.workers[w] for w in self.workers
                      if w[0] == inst and self.workers[w].get("peer_init_url"))
        return http.json_response({"instance_id": inst, "peer_init_url": worker["peer_init_url"],
                                   "num_chunks": n, "location": self.kv[keys[0]][inst]})

    # ------------------------------------------------------------------ API
    async def h_health(self, req: http.Request) -> http.Response:
        if req.method == "GET":
            return http.json_response({"status": "healthy"})
        b = req.json() if req.body else {}
        inst = b.get("instance_id")
        ws = [(k, w) for k, w in self.workers.items() if k[0] == inst]
        if not ws:
            return http.json_response({"detail": f"Instance {inst} not registered"}, 500)
        codes = {}
        for (_inst, wid), w in ws:
            codes[str(wid)] = await self._ping(w)
        return http.json_response({"event_id": "health" + str(uuid.uuid4()), "error_codes": codes})

    async def _ping(self, w: dict) -> int:
        try:
            status, _h, _b = await http.request("GET", f"http://{w['ip']}:{w['port']}/health",
                                                timeout=1.0)
        except (asyncio.TimeoutError, OSError, ValueError):
            return -1
        if status == 200:
            w["last_ok"] = time.time()
            return 0
        return -1

    async def h_workers(self, req: http.Request) -> http.Response:
        inst = req.query.get("instance_id")
        wid = req.query.get("worker_id")
        if inst is not None and wid is not None:
            key = (inst, int(wid))
            if key not in self.workers:
                return http.json_response({"detail": f"Worker ({inst}, {wid}) not found"}, 404)
            return http.json_response(self._worker_info(key, self.workers[key]))
        items = [(k, w) for k, w in self.workers.items() if inst is None or k[0] == inst]
        if inst is not None and not items:
            return http.json_response({"detail": f"No workers found for instance {inst}"}, 404)
        workers = [self._worker_info(k, w) for k, w in items]
        return http.json_response({"workers": workers, "total_count": len(workers)})

    async def h_key_stats(self, req: http.Request) -> http.Response:
        insts = sorted({k[0] for k in self.workers} | set(self.inst_keys))
        rows = [{"instance_id": i, "key_count": len(self.inst_keys.get(i, ())),
                 "worker_count": sum(1 for k in self.workers if k[0] == i)} for i in insts]
        return http.json_response({"total_key_count": sum(r["key_count"] for r in rows),
                                   "total_instance_count": len(rows),
                                   "total_worker_count": len(self.workers), "instances": rows})

    async def h_metrics(self, req: http.Request) -> http.Response:
        self.g_keys.set(len(self.kv))
        self.g_workers.set(len(self.workers))
        self.g_pull.set(self.pull_count)
        self.g_reply.set(self.reply_count)
        return http.Response(generate_latest(self.registry),
                             content_type="text/plain; version=0.0.4; charset=utf-8")

    async def h_lookup(self, req: http.Request) -> http.Response:
        b = req.json()
        tokens = b.get("tokens")
        if not isinstance(tokens, list):
            return http.json_response({"detail": "tokens: Field required"}, 422)
        keys = [k for _, _, k in chain_hashes(tokens, self.chunk_size, self.seed, b"lmcache")]
        layout: dict[str, list] = {}
        for inst, held in self.inst_keys.items():
            n = 0
            for k in keys:
                if k not in held:
                    break
                n += 1
            if n:
                layout[inst] = [self.kv[keys[0]].get(inst, "LocalCPUBackend"), n * self.chunk_size]
        return http.json_response({"event_id": "Lookup" + str(uuid.uuid4()), "layout_info": layout})

    async def h_clear(self, req: http.Request) -> http.Response:
        b = req.json()
        inst = b.get("instance_id")
        ws = [w for k, w in self.workers.items() if k[0] == inst]
        if not ws:
            return http.json_response({"detail": f"Instance {inst} not registered"}, 500)
        total = 0
        for w in ws:
            try:
                status, body = await http.post_json(f"http://{w['ip']}:{w['port']}/clear",
                                                    {"location": b.get("location")}, timeout=2)
            except (asyncio.TimeoutError, OSError, ValueError):
                continue
            if status == 200 and isinstance(body, dict):
                total += int(body.get("num_tokens", 0))
        return http.json_response({"event_id": "Clear" + str(uuid.uuid4()), "num_tokens": total})

    async def h_query_worker_info(self, req: http.Request) -> http.Response:
        b = req.json()
        inst, wids = b.get("instance_id"), b.get("worker_ids")
        infos = [self._worker_info(k, w) for k, w in self.workers.items()
                 if k[0] == inst and (wids is None or k[1] in wids)]
        for i in infos:
            i.pop("key_count", None)
        return http.json_response({"event_id": "QueryWorkerInfo" + str(uuid.uuid4()),
                                   "worker_infos": infos})

    async def h_check_finish(self, req: http.Request) -> http.Response:
        return http.json_response({"status": "finished"})

    async def h_query_instance(self, req: http.Request) -> http.Response:
        b = req.json()
        inst = next((k[0] for k, w in self.workers.items() if w["ip"] == b.get("ip")), "")
        return http.json_response({"event_id": b.get("event_id", ""), "res": inst})

    # ------------------------------------------------------------------ lifecycle
    async def health_loop(self) -> None:
        interval = self.args.health_check_interval
        timeout = self.args.lmcache_worker_timeout
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            for key, w in list(self.workers.items()):
                if await self._ping(w) != 0 and now - w["last_ok"] > timeout:
                    self.workers.pop(key, None)
                    if not any(k[0] == key[0] for k in self.workers):
                        self._drop_instance_keys(key[0])
                    self.log.lmcache("WARNING", _DEREG, f"Worker {key} timed out, deregistered")

    async def serve(self, stop: asyncio.Event) -> None:
        a = self.args
        r = self.router()
        for port in self.ports():
            srv = http.Server(r, error_response=self._error)
            await srv.start(a.host, port)
            self.servers.append(srv)
        urls = self.monitor_urls()
        self.log.lmcache("INFO", _CTL, f"Starting LMCache controller at {a.host}:{a.port}")
        self.log.lmcache("INFO", ("__main__.py", 525, _CTL[2]),
                         f"Monitoring lmcache workers at ports {urls}")
        self.log.lmcache("INFO", ("__main__.py", 526, _CTL[2]),
                         f"Health check interval: {a.health_check_interval}s")
        self.log.lmcache("INFO", ("__main__.py", 527, _CTL[2]),
                         f"Worker timeout: {a.lmcache_worker_timeout}s")
        if not urls.get("heartbeat"):
            self.log.lmcache("WARNING", _MGR, "Heartbeat socket is None, heartbeat handler not started!")
        self.log.lmcache("INFO", logfmt.LMC_SIM,
                         f"[sim] kvorch simulated controller, PYTHONHASHSEED={describe_seed(self.env)}, "
                         f"lookup chunk_size={self.chunk_size}")
        if a.health_check_interval and a.health_check_interval > 0:
            self.tasks.append(asyncio.create_task(self.health_loop()))
        self._uvicorn(f"Started server process [{os.getpid()}]")
        self._uvicorn("Waiting for application startup.")
        self._uvicorn("Application startup complete.")
        self._uvicorn(f"Uvicorn running on http://{a.host}:{a.port} (Press CTRL+C to quit)")
        await stop.wait()

    def _uvicorn(self, msg: str) -> None:
        # uvicorn's default format, as lmcache_controller's uvicorn.run() prints it
        self.log._write(self.log.lmc_stream, f"INFO:     {msg}\n")

    async def shutdown(self) -> None:
        self._uvicorn("Shutting down")
        for t in self.tasks:
            t.cancel()
        self._uvicorn("Waiting for application shutdown.")
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.close(0.3), 0.4)
            except (asyncio.TimeoutError, Exception):
                pass
        self._uvicorn("Application shutdown complete.")
        self._uvicorn(f"Finished server process [{os.getpid()}]")


def main(argv=None) -> int:
    args, params = parse_args(argv)
    ctl = Controller(args, params)
    got_signal = {"sig": None}

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(sig):
            got_signal["sig"] = sig
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await ctl.serve(stop)
        except OSError as e:
            ctl.log.lmcache("ERROR", _CTL, f"Failed to start controller: {e}")
            await ctl.shutdown()
            return 1
        await ctl.shutdown()
        return 128 + int(got_signal["sig"]) if got_signal["sig"] else 0

    return run_precise(run())


if __name__ == "__main__":
    sys.exit(main())
