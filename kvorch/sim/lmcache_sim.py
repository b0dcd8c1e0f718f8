"""The LMCache side of the simulated engine: chunked KV store with CPU/disk tiers, lookup,
retrieve, store, CacheBlend segments, and P2P through the (simulated) controller.

P2P data path (documented choice): a peer's chunks are fetched over HTTP from its
**p2p init port** (``POST http://<peer_init_url>/p2p/fetch``), the ``peer_init_url`` it
registered with the controller (``p2p_host:p2p_init_ports[0]``). The bytes are real:
``tokens * wire_bytes_per_token`` per chunk (default 64 bytes/token, so tests stay fast);
the time charged is the modeled size (``tokens * model bytes/token``) over ``--sim-transfer-mbps``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from . import http, logfmt
from .hashing import chain_hashes, salted_domain, segment_hash
from .kv import DiskDir, Entry, GiB, ModelShape, Tier, wire_payload
from .latency import LatencyModel

CPU = "LocalCPUBackend"
DISK = "LocalDiskBackend"


@dataclass
class Chunk:
    start: int
    end: int
    key: str
    source: str = ""  # cpu | disk | peer

    @property
    def tokens(self) -> int:
        return self.end - self.start


@dataclass
class LookupResult:
    hit_tokens: int
    chunks: list[Chunk]  # the hit chunks in order (prefix mode) or found segments (blend)
    all_chunks: list[Chunk]  # every chunk/segment of the prompt
    peer: dict | None = None  # {"instance_id", "peer_init_url"} when some chunks are remote
    lookup_s: float = 0.0


@dataclass
class RetrieveResult:
    retrieved: int
    required: int
    modeled_s: float
    nbytes_model: int
    p2p_tokens: int = 0


def _url(hostport: str) -> str:
    return hostport if hostport.startswith("http") else f"http://{hostport}"


@dataclass
class LMCacheSim:
    cfg: dict
    shape: ModelShape
    seed: bytes
    log: logfmt.Logger
    metrics: Any
    latency: LatencyModel
    wire_bytes_per_token: int = 64
    api_url: str = ""
    online: bool = True
    registered: bool = False
    cpu: Tier = field(init=False)
    disk: Tier | None = field(init=False, default=None)
    disk_dir: DiskDir | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        c = self.cfg
        self.chunk_size = int(c["chunk_size"])
        self.save_unfull = bool(c["save_unfull_chunk"])
        self.blending = bool(c["enable_blending"])
        self.blend_sep = c["blend_special_str"] or " # # "
        ratios = c.get("blend_recompute_ratios") or [0.15]
        self.blend_ratio = float(ratios[0])
        self.p2p = bool(c["enable_p2p"])
        self.controller = bool(c["enable_controller"])
        self.instance_id = c["lmcache_instance_id"]
        cpu_bytes = int(float(c["max_local_cpu_size"] or 0) * GiB) if c["local_cpu"] else 0
        self.cpu = Tier(CPU, cpu_bytes, on_evict=self._cpu_evicted)
        if c.get("local_disk") and float(c.get("max_local_disk_size") or 0) > 0:
            path = str(c["local_disk"]).split(",")[0]
            self.disk_dir = DiskDir(path)
            self.disk = Tier(DISK, int(float(c["max_local_disk_size"]) * GiB),
                             on_evict=self._disk_evicted)
        self.pull_url = _url(c["controller_pull_url"]) if c.get("controller_pull_url") else None
        self.reply_url = _url(c["controller_reply_url"]) if c.get("controller_reply_url") else None
        self.worker_port = (c.get("lmcache_worker_ports") or [None])[0]
        self.p2p_host = c.get("p2p_host")
        self.p2p_init_port = (c.get("p2p_init_ports") or [None])[0]
        self.p2p_lookup_port = (c.get("p2p_lookup_ports") or [None])[0]
        self._pending_events: list[dict] = []
        self._flush_task: asyncio.Task | None = None
        self._clearing = False

    # ------------------------------------------------------------------ keys
    def chunks_of(self, tokens: list[int], cache_salt: str = "") -> list[Chunk]:
        """Chunk keys; a request's ``cache_salt`` is part of every key (LMCache 0.5.6 MP: ObjectKey.cache_salt)."""
        return [Chunk(s, e, k) for s, e, k in
                chain_hashes(tokens, self.chunk_size, self.seed, salted_domain(b"lmcache", cache_salt), self.save_unfull)]

    def segments_of(self, segments: list[list[int]]) -> list[Chunk]:
        out, pos = [], 0
        for seg in segments:
            if seg:
                out.append(Chunk(pos, pos + len(seg), segment_hash(seg, self.seed)))
            pos += len(seg)
        return out

    def size_bytes(self, tokens: int) -> int:
        return tokens * self.shape.bytes_per_token

    def _has(self, key: str) -> str | None:
        if key in self.cpu:
            self.cpu.touch(key)
            return "cpu"
        if self.disk is not None and key in self.disk:
            self.disk.touch(key)
            return "disk"
        return None

    # ------------------------------------------------------------------ lookup
    async def lookup(self, tokens: list[int], segments: list[list[int]] | None = None,
                     cache_salt: str = "") -> LookupResult:
        t0 = time.perf_counter()
        m = self.metrics
        if self.blending and segments is not None:
            all_chunks = self.segments_of(segments)
            found = []
            for ch in all_chunks:
                src = self._has(ch.key)
                if src:
                    ch.source = src
                    found.append(ch)
            hit = sum(c.tokens for c in found)
            res = LookupResult(hit, found, all_chunks)
        else:
            all_chunks = self.chunks_of(tokens, cache_salt)
            found = []
            for ch in all_chunks:
                src = self._has(ch.key)
                if not src:
                    break
                ch.source = src
                found.append(ch)
            res = LookupResult(0, found, all_chunks)
            rest = all_chunks[len(found):]
            if rest and self.p2p and self.reply_url and self.online:
                peer = await self._p2p_lookup([c.key for c in rest])
                if peer and peer.get("num_chunks", 0) > 0:
                    for ch in rest[: peer["num_chunks"]]:
                        ch.source = "peer"
                        found.append(ch)
                    res.peer = peer
            res.hit_tokens = found[-1].end if found else 0
        res.lookup_s = time.perf_counter() - t0
        m.l_lookup_requests.inc()
        m.l_lookup_tokens.inc(len(tokens))
        m.l_lookup_hits.inc(res.hit_tokens)
        m.l_time_to_lookup.observe(res.lookup_s)
        if res.hit_tokens == 0:
            m.l_lookup_0_hit.inc()
        m.l_lookup_hit_rate.set(res.hit_tokens / len(tokens) if tokens else 0)
        return res

    async def _p2p_lookup(self, keys: list[str]) -> dict | None:
        try:
            status, body = await http.post_json(
                self.reply_url + "/p2p_lookup",
                {"instance_id": self.instance_id, "keys": keys}, timeout=2)
        except (asyncio.TimeoutError, OSError, ValueError):
            return None
        return body if status == 200 and isinstance(body, dict) else None

    # ------------------------------------------------------------------ retrieve
    async def retrieve(self, req_id: str, res: LookupResult, vllm_cached: int) -> RetrieveResult:
        """Load the hit chunks not already covered by vLLM's cache (masked by whole chunks)."""
        masked = vllm_cached // self.chunk_size * self.chunk_size
        todo = [c for c in res.chunks if c.end > masked]
        required = sum(c.end - max(c.start, masked) for c in todo)
        t0 = time.perf_counter()
        self.metrics.l_retrieve_requests.inc()
        self.metrics.l_requested_tokens.inc(required)
        retrieved = 0
        modeled = 0.0
        p2p_tokens = 0
        peer_chunks = [c for c in todo if c.source == "peer"]
        local = [c for c in todo if c.source != "peer"]
        lat = self.latency
        for c in local:
            n = c.end - max(c.start, masked)
            if c.source == "cpu" and c.key in self.cpu:
                retrieved += n
                modeled += lat.load_s(n)
            elif c.source == "disk" and self.disk is not None and c.key in self.disk:
                data = self.disk_dir.read(c.key) if self.disk_dir else None
                if data is None:
                    break
                retrieved += n
                modeled += lat.disk_load_s(n)
                # promote to the CPU tier, as a read from disk lands in CPU memory
                self._put_cpu(c.key, c.tokens)
            else:
                break
        else:
            if peer_chunks and res.peer:
                t_p = time.perf_counter()
                got = await self._p2p_fetch(res.peer, peer_chunks)
                for c in peer_chunks[:got]:
                    n = c.end - max(c.start, masked)
                    retrieved += n
                    p2p_tokens += n
                    # LMCache 0.5.6 StorageManager.batched_get writes what a remote backend (P2P)
                    # returned back into LocalCPUBackend, which admits it to the controller
                    if not self._has(c.key) and self._put_cpu(c.key, c.tokens):
                        self._event("admit", c.key, CPU)
                nbytes = self.size_bytes(p2p_tokens)
                transfer = lat.transfer_s(nbytes) + lat.load_s(p2p_tokens)
                modeled += transfer
                self.metrics.l_p2p_time.observe(max(transfer, time.perf_counter() - t_p))
        real = time.perf_counter() - t0
        cost = max(modeled, real)
        nbytes_model = self.size_bytes(retrieved)
        self.metrics.l_hit_tokens.inc(retrieved)
        self.metrics.l_time_to_retrieve.observe(cost)
        self.metrics.l_retrieve_hit_rate.set(retrieved / required if required else 0)
        self.log.lmcache("INFO", logfmt.LMC_RETRIEVED, logfmt.retrieved_line(
            req_id, retrieved, required, res.hit_tokens, nbytes_model / GiB, cost))
        return RetrieveResult(retrieved, required, max(0.0, modeled - real), nbytes_model, p2p_tokens)

    async def _p2p_fetch(self, peer: dict, chunks: list[Chunk]) -> int:
        """Fetch the chunks' bytes from the peer; returns how many leading chunks arrived."""
        url = _url(peer["peer_init_url"]) + "/p2p/fetch"
        body = {"keys": [c.key for c in chunks], "tokens": [c.tokens for c in chunks],
                "requester": self.instance_id}
        try:
            status, headers, data = await http.request("POST", url, body, timeout=10)
        except (asyncio.TimeoutError, OSError, ValueError):
            return 0
        if status != 200:
            return 0
        found = int(headers.get("x-chunks-found", "0"))
        expected = sum(c.tokens for c in chunks[:found]) * self.wire_bytes_per_token
        return found if len(data) == expected else 0

    def serve_fetch(self, keys: list[str], tokens: list[int]) -> tuple[int, bytes]:
        """Peer side of a P2P fetch: the leading chunks this instance still holds."""
        parts = []
        for key, n in zip(keys, tokens):
            src = self._has(key)
            if src is None:
                break
            if src == "disk" and self.disk_dir is not None:
                data = self.disk_dir.read(key)
                if data is None:
                    break
                parts.append(data[: n * self.wire_bytes_per_token].ljust(n * self.wire_bytes_per_token, b"\0"))
            else:
                parts.append(wire_payload(key, n * self.wire_bytes_per_token))
        return len(parts), b"".join(parts)

    def count_prefix(self, keys: list[str]) -> int:
        n = 0
        for k in keys:
            if self._has(k) is None:
                break
            n += 1
        return n

    # ------------------------------------------------------------------ store
    def _put_cpu(self, key: str, tokens: int) -> bool:
        if self.cpu.capacity <= 0:
            return False
        evicted = self.cpu.put(key, Entry(tokens, self.size_bytes(tokens)))
        for k in evicted:
            if k == key:
                return False
        return True

    def _cpu_evicted(self, key: str, entry: Entry) -> None:
        if not self._clearing:
            self.metrics.l_evict.inc()
        if self.disk is None or key not in self.disk:
            self._event("evict", key, CPU)

    def _disk_evicted(self, key: str, entry: Entry) -> None:
        if self.disk_dir is not None:
            self.disk_dir.delete(key)
        if key not in self.cpu:
            self._event("evict", key, DISK)

    def _event(self, op: str, key: str, location: str) -> None:
        if self.controller:
            self._pending_events.append({"op": op, "key": key, "location": location})
            if len(self._pending_events) > 200_000:  # controller unreachable for long: keep the newest
                del self._pending_events[:100_000]

    async def store(self, req_id: str, res: LookupResult) -> tuple[int, int]:
        """Store the prompt's chunks beyond LMCache's own hit. Returns (stored, total)."""
        if self.blending:
            to_store = [c for c in res.all_chunks if c not in res.chunks]
        else:
            skip = res.hit_tokens
            to_store = [c for c in res.all_chunks if c.start >= skip]
        total = sum(c.tokens for c in to_store)
        if total == 0:
            return 0, 0
        t0 = time.perf_counter()
        self.metrics.l_store_requests.inc()
        self.metrics.l_stored_tokens.inc(total)
        stored = 0
        for c in to_store:
            if self._has(c.key):
                continue
            ok = self._put_cpu(c.key, c.tokens)
            if self.disk is not None and self.disk_dir is not None:
                self.disk.put(c.key, Entry(c.tokens, self.size_bytes(c.tokens)))
                if c.key in self.disk:
                    self.disk_dir.write(c.key, wire_payload(c.key, c.tokens * self.wire_bytes_per_token))
                    ok = True
            if ok:
                stored += c.tokens
                self._event("admit", c.key, CPU if c.key in self.cpu else DISK)
        cost = max(time.perf_counter() - t0, self.latency.store_s(stored))
        nbytes = self.size_bytes(stored)
        self.metrics.l_time_to_store.observe(cost)
        self._update_usage()
        self.log.lmcache("INFO", logfmt.LMC_STORED,
                         logfmt.stored_line(req_id, stored, total, nbytes / GiB, cost))
        self.schedule_flush()
        return stored, total

    def schedule_flush(self) -> None:
        """Send pending admit/evict events to the controller in the background (one at a time),
        like LMCache's worker pushes them on its ZMQ socket without blocking the request."""
        if not self._pending_events or not self.registered:
            return
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_all())

    async def _flush_all(self) -> None:
        while self._pending_events and self.registered:
            n = len(self._pending_events)
            await self.flush_events()
            if len(self._pending_events) >= n:  # no progress: the controller is away
                await asyncio.sleep(0.5)

    def _update_usage(self) -> None:
        self.metrics.l_local_cache_usage.set(self.cpu.used)
        if self.disk is not None:
            self.metrics.l_local_storage_usage.set(self.disk.used)

    def clear(self, location: str | None = None) -> int:
        n = 0
        self._clearing = True
        try:
            if location in (None, "", CPU, "cpu", "LocalCPU"):
                n += self.cpu.clear()
            if self.disk is not None and location in (None, "", DISK, "disk", "LocalDisk"):
                n += self.disk.clear()
        finally:
            self._clearing = False
        self._update_usage()
        self.schedule_flush()
        return n

    def key_count(self) -> int:
        keys = set(self.cpu.entries)
        if self.disk is not None:
            keys |= set(self.disk.entries)
        return len(keys)

    # ------------------------------------------------------------------ controller
    def registration(self) -> dict:
        peer = f"{self.p2p_host}:{self.p2p_init_port}" if self.p2p and self.p2p_init_port else None
        return {"instance_id": self.instance_id, "worker_id": 0,
                "ip": self.p2p_host or "127.0.0.1", "port": self.worker_port or 0,
                "peer_init_url": peer, "api_url": self.api_url,
                "p2p_lookup_url": (f"{self.p2p_host}:{self.p2p_lookup_port}"
                                   if self.p2p and self.p2p_lookup_port else None)}

    async def register_loop(self) -> None:
        """Register with the controller (retrying until it answers), then heartbeat if asked."""
        if not (self.controller and self.pull_url and self.online):
            return
        delay = 0.05
        t0 = time.monotonic()
        warned = False
        while not self.registered:
            if await self._post(self.pull_url + "/register", self.registration()):
                self.registered = True
                break
            if not warned and time.monotonic() - t0 > 5:
                warned = True
                self.log.lmcache("WARNING", logfmt.LMC_SIM,
                                 f"[sim] LMCache controller at {self.pull_url} not reachable yet; "
                                 f"retrying registration of {self.instance_id}")
            await asyncio.sleep(delay)
            delay = min(0.25, delay * 2)
        # re-announce what we hold (a restarted controller starts empty)
        held = [{"op": "admit", "key": k, "location": CPU} for k in self.cpu.entries]
        if self.disk is not None:
            held += [{"op": "admit", "key": k, "location": DISK} for k in self.disk.entries
                     if k not in self.cpu]
        self._pending_events = held + self._pending_events
        await self.flush_events()
        period = self.cfg.get("lmcache_worker_heartbeat_time")
        if period:
            await asyncio.sleep(float(self.cfg.get("lmcache_worker_heartbeat_delay_time") or 0))
            while True:
                await self._post(self.pull_url + "/heartbeat",
                                 {"instance_id": self.instance_id, "worker_id": 0})
                await asyncio.sleep(float(period))

    async def flush_events(self) -> None:
        if not self._pending_events or not self.registered or not self.pull_url:
            return
        events, self._pending_events = self._pending_events, []
        ok = await self._post(self.pull_url + "/kv_events",
                              {"instance_id": self.instance_id, "worker_id": 0, "events": events})
        if not ok:
            self._pending_events = events + self._pending_events

    async def deregister(self) -> None:
        if self.registered and self.pull_url:
            await self._post(self.pull_url + "/deregister",
                             {"instance_id": self.instance_id, "worker_id": 0,
                              "ip": self.p2p_host or "127.0.0.1", "port": self.worker_port or 0},
                             timeout=0.3)

    async def _post(self, url: str, body: dict, timeout: float = 2.0) -> bool:
        try:
            status, _ = await http.post_json(url, body, timeout=timeout)
        except (asyncio.TimeoutError, OSError, ValueError):
            return False
        return status == 200


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
