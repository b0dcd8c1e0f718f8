"""Simulated vLLM + LMCache engine.

Started like vLLM's OpenAI server, with the same arguments (see :mod:`kvorch.sim.args`)::

    PYTHONHASHSEED=123 LMCACHE_CONFIG_FILE=example1.yaml \\
    python -m kvorch.sim.engine --model meta-llama/Meta-Llama-3.1-8B-Instruct --host 127.0.0.1 \\
        --port 8010 --max-model-len 1600 --gpu-memory-utilization 0.9 \\
        --kv-transfer-config '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'

HTTP: ``GET /health``, ``GET /v1/models``, ``GET /version``, ``GET /metrics``,
``POST /v1/completions``, ``POST /v1/chat/completions`` (SSE streaming, usage),
``POST /tokenize``, ``POST /detokenize``, and ``POST /reset_prefix_cache[?reset_external=true]``
(only with ``VLLM_SERVER_DEV_MODE=1``, like vLLM). With LMCache P2P configured it also listens
on its LMCache worker port (controller -> worker: ``/health``, ``/clear``), its p2p init port
(peers fetch KV bytes: ``POST /p2p/fetch``) and its p2p lookup port (``POST /p2p/lookup``).

Request ids, as vLLM 0.32 forms them: ``X-Request-Id: abc`` (else the body's ``request_id``,
else 16 random hex digits) gives the response id ``cmpl-abc`` / ``chatcmpl-abc``; the engine
(and so every LMCache log line) uses ``cmpl-abc-0-<8 hex>`` (completions: ``-<prompt index>``)
or ``chatcmpl-abc-<8 hex>``; ``VLLM_DISABLE_REQUEST_ID_RANDOMIZATION=1`` drops the random tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from .. import lmcache_config as lc
from . import http, logfmt
from .args import parse_args
from .hashing import chain_hashes, describe_seed, hash_seed, salted_domain
from .kv import ModelShape, PrefixCache, model_max_len, resolve_model_shape
from .latency import LatencyModel
from .lmcache_sim import LMCacheSim, LookupResult
from .loop import run_precise
from .metrics import EngineMetrics
from .tokenizer import Generator, Tokenizer, render_chat

VLLM_VERSION = "0.32.0"
LMCACHE_CONNECTORS = {"LMCacheConnectorV1", "LMCacheConnectorV1Dynamic", "LMCacheMPConnector"}


def random_uuid() -> str:
    return f"{uuid.uuid4().int & ((1 << 64) - 1):016x}"


class ApiError(Exception):
    def __init__(self, status: int, err_type: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.err_type, self.message, self.param = status, err_type, message, param

    def response(self) -> http.Response:
        return http.json_response({"error": {"message": self.message, "type": self.err_type,
                                            "param": self.param, "code": self.status}},
                                 status=self.status)


def bad_request(msg: str, param: str | None = None) -> ApiError:
    return ApiError(400, "BadRequestError", msg, param)


@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    ignore_eos: bool
    seed: int | None
    stop: list[str] = field(default_factory=list)
    cache_salt: str = ""
    return_token_ids: bool = False


@dataclass
class Event:
    token: int | None
    text: str
    finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Engine:
    def __init__(self, args, environ=None):
        self.args = args
        self.env = dict(os.environ if environ is None else environ)
        self.log = logfmt.Logger("APIServer")
        self.t_start = time.time()
        self.model = args.model
        self.served = args.served_model_name or [args.model]
        self.model_name = self.served[0]
        self.shape: ModelShape = resolve_model_shape(args.model, args.dtype, args.sim_model_shape)
        if args.sim_kv_bytes_per_token:
            self.shape = ModelShape(1, 1, max(1, args.sim_kv_bytes_per_token // 2), 1, "flag")
        self.max_model_len = args.max_model_len or model_max_len(args.model) or 4096
        self.latency = LatencyModel(
            prefill_ms_per_token=args.sim_prefill_ms_per_token,
            load_ms_per_token=args.sim_load_ms_per_token,
            disk_load_ms_per_token=args.sim_disk_load_ms_per_token,
            store_ms_per_token=args.sim_store_ms_per_token,
            transfer_mbps=args.sim_transfer_mbps,
            ms_per_output_token=args.sim_ms_per_output_token,
            startup_s=args.sim_startup_s,
            load_factor=args.sim_load_factor)
        self.tok = Tokenizer()
        self.gen = Generator(self.tok)
        self.seed = hash_seed(self.env)
        self._jitter = random.Random()
        bpt = self.shape.bytes_per_token
        if args.num_gpu_blocks_override:
            blocks = args.num_gpu_blocks_override
        else:
            kv_bytes = args.sim_gpu_memory_gb * 1e9 * args.gpu_memory_utilization * 0.35
            blocks = max(16, int(kv_bytes / bpt / args.block_size))
        self.prefix = PrefixCache(blocks, args.block_size, args.enable_prefix_caching)
        self.dev_mode = self.env.get("VLLM_SERVER_DEV_MODE", "0") in ("1", "true", "True")
        self.randomize_ids = self.env.get("VLLM_DISABLE_REQUEST_ID_RANDOMIZATION", "0") not in (
            "1", "true", "True")
        ktc = args.kv_transfer_config or {}
        self.connector = ktc.get("kv_connector")
        self.lmc_cfg: dict | None = None
        self.lmc: LMCacheSim | None = None
        self.metrics = EngineMetrics(self.model_name, self.max_model_len,
                                     lmcache=self.connector in LMCACHE_CONNECTORS)
        self.running = 0
        self.waiting = 0
        self.slots: asyncio.Semaphore | None = None
        self.servers: list[http.Server] = []
        self.stats = {"prompt": 0, "gen": 0, "q": 0, "h": 0, "eq": 0, "eh": 0, "requests": 0}
        self._last_stats = dict(self.stats)
        self.tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ startup
    def load_lmcache(self) -> None:
        """Read LMCACHE_CONFIG_FILE / LMCACHE_* exactly as LMCache 0.5.6 does, with its messages."""
        if self.connector not in LMCACHE_CONNECTORS:
            return
        log = self.log
        if self.connector == "LMCacheMPConnector":
            log.warning("sim", 0, "[sim] LMCacheMPConnector: the LMCache MP server is not simulated; "
                                  "using an in-process simulated LMCache store instead")
        path = self.env.get(lc.CONFIG_FILE_ENV)
        if path is None:
            log.lmcache("WARNING", logfmt.LMC_NO_CONFIG,
                        "No LMCache configuration file is set. Trying to read configurations "
                        "from the environment variables.")
            log.lmcache("WARNING", logfmt.LMC_NO_CONFIG2,
                        "You can set the configuration file through the environment variable: "
                        "LMCACHE_CONFIG_FILE")
        else:
            log.lmcache("INFO", logfmt.LMC_CONFIG_LOAD, f"Loading LMCache config file {path}")
        cfg, warnings = lc.load_config(path, self.env)
        for w in warnings:
            log.lmcache("WARNING", lc.warning_origin(w), w)
        errors = lc.validate_semantics(cfg, runtime=False)
        for w in lc.validate_semantics(cfg)[len(errors):]:
            log.lmcache("WARNING", logfmt.LMC_SIM, f"[sim] {w} (LMCache would start anyway)")
        if errors:
            for e in errors:
                log.lmcache("ERROR", ("config.py", 700, "lmcache.v1.config"), e)
            raise SystemExit(f"LMCache configuration is invalid: {'; '.join(errors)}")
        for w in lc.semantic_warnings(cfg):
            if not w.startswith("lmcache_instance_id"):
                log.lmcache("WARNING", lc.warning_origin(w), w)
        lc.apply_validate_adjustments(cfg)
        self.lmc_cfg = cfg
        self.lmc = LMCacheSim(cfg, self.shape, self.seed, log, self.metrics, self.latency,
                              wire_bytes_per_token=self.args.sim_wire_bytes_per_token,
                              api_url=f"http://{self.args.host}:{self.args.port}")

    def startup_lines(self) -> None:
        a, log = self.args, self.log
        log.info("api_utils.py", 327, f"vLLM server version {VLLM_VERSION}, serving model {self.model}")
        from .args import build_parser
        defaults = vars(build_parser().parse_args([]))
        nd = {k: v for k, v in vars(a).items()
              if k not in ("model_tag",) and not k.startswith("sim_") and v != defaults.get(k)}
        log.info("api_utils.py", 286, f"non-default args: {nd}")
        log.info("sim", 0, f"[sim] kvorch simulated engine: KV {self.shape.bytes_per_token} bytes/token "
                           f"({self.shape.source}), {self.prefix.num_blocks} GPU blocks of "
                           f"{a.block_size}, PYTHONHASHSEED={describe_seed(self.env)}, "
                           f"latency {self.latency}")
        log.info("kv_cache_utils.py", 1087,
                 f"GPU KV cache size: {self.prefix.num_blocks * a.block_size:,} tokens")
        log.info("kv_cache_utils.py", 1091, f"Maximum concurrency for {self.max_model_len:,} tokens "
                 f"per request: {self.prefix.num_blocks * a.block_size / self.max_model_len:.2f}x")
        if self.connector:
            log.info("factory.py", 64, f"Creating v1 connector with name: {self.connector} and "
                                       f"engine_id: {uuid.uuid4()}")

    def build_router(self) -> http.Router:
        r = http.Router()
        r.get("/health", self.h_health)
        r.get("/ping", self.h_health)
        r.get("/v1/models", self.h_models)
        r.get("/version", self.h_version)
        r.get("/metrics", self.h_metrics)
        r.post("/v1/completions", self.h_completions)
        r.post("/v1/chat/completions", self.h_chat)
        r.post("/tokenize", self.h_tokenize)
        r.post("/detokenize", self.h_detokenize)
        if self.dev_mode:
            r.post("/reset_prefix_cache", self.h_reset_prefix_cache)
        return r

    def build_lmcache_apps(self) -> list[tuple[str, int, http.Router]]:
        """Apps for the LMCache worker port, p2p init port and p2p lookup port."""
        lmc = self.lmc
        if lmc is None or not (lmc.controller or lmc.p2p):
            return []
        out = []
        host = lmc.p2p_host or self.args.host
        if lmc.worker_port:
            a = http.Router()
            a.add("*", "/health", self.h_worker_health)
            a.post("/clear", self.h_worker_clear)
            out.append((host, lmc.worker_port, a))
        if lmc.p2p and lmc.p2p_init_port:
            a = http.Router()
            a.post("/p2p/fetch", self.h_p2p_fetch)
            out.append((host, lmc.p2p_init_port, a))
        if lmc.p2p and lmc.p2p_lookup_port:
            a = http.Router()
            a.post("/p2p/lookup", self.h_p2p_lookup)
            out.append((host, lmc.p2p_lookup_port, a))
        return out

    async def _middleware(self, request: http.Request, handler):
        if self.args.api_key and request.path.startswith("/v1"):
            if request.headers.get("Authorization") != f"Bearer {self.args.api_key}":
                return http.json_response({"error": "Unauthorized"}, status=401)
        try:
            resp = await handler(request)
        except ApiError as e:
            resp = e.response()
        if self.args.enable_request_id_headers and not resp.prepared:
            resp.headers.setdefault("X-Request-Id",
                                    request.headers.get("X-Request-Id", uuid.uuid4().hex))
        if not self.args.disable_uvicorn_access_log:
            peer = request.peer
            addr = f"{peer[0]}:{peer[1]}" if peer else "-"
            self.log.info("h11_impl.py", 473, f'{addr} - "{request.method} {request.path_qs} '
                                              f'{request.version}" {resp.status}')
        return resp

    @staticmethod
    def _error(status: int, message: str) -> http.Response:
        detail = {404: "Not Found", 405: "Method Not Allowed"}.get(status, message)
        return http.json_response({"detail": detail}, status)

    # ------------------------------------------------------------------ simple endpoints
    async def h_health(self, request):
        return http.Response(status=200)

    async def h_version(self, request):
        from .. import __version__
        return http.json_response({"version": VLLM_VERSION, "kvorch_sim": __version__})

    async def h_models(self, request):
        created = int(self.t_start)
        data = [{"id": name, "object": "model", "created": created, "owned_by": "vllm",
                 "root": self.model, "parent": None, "max_model_len": self.max_model_len,
                 "permission": [{"id": f"modelperm-{random_uuid()}", "object": "model_permission",
                                 "created": created, "allow_create_engine": False,
                                 "allow_sampling": True, "allow_logprobs": True,
                                 "allow_search_indices": False, "allow_view": True,
                                 "allow_fine_tuning": False, "organization": "*", "group": None,
                                 "is_blocking": False}]}
                for name in self.served]
        return http.json_response({"object": "list", "data": data})

    async def h_metrics(self, request):
        self.metrics.running.set(self.running)
        self.metrics.waiting.set(self.waiting)
        self.metrics.kv_usage.set(self.prefix.usage())
        return http.Response(self.metrics.render(),
                             content_type="text/plain; version=0.0.4; charset=utf-8")

    async def h_reset_prefix_cache(self, request):
        self.log.info("api_router.py", 39, "Resetting prefix cache...")
        reset_running = request.query.get("reset_running_requests", "false").lower() == "true"
        reset_external = request.query.get("reset_external", "false").lower() == "true"
        if self.running and not reset_running:
            return http.json_response({"success": False})
        self.prefix.reset()
        if reset_external and self.lmc is not None:
            self.lmc.clear()
        return http.json_response({"success": True})

    async def _json(self, request) -> dict:
        try:
            body = json.loads(request.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request(str([{"type": "json_invalid", "loc": ("body", getattr(e, "pos", 0)),
                                    "msg": "JSON decode error", "input": {},
                                    "ctx": {"error": getattr(e, "msg", str(e))}}]), "body") from None
        if not isinstance(body, dict):
            raise bad_request(str([{"type": "model_attributes_type", "loc": ("body",),
                                    "msg": "Input should be a valid dictionary or object to "
                                           "extract fields from"}]), "body")
        return body

    def _check_model(self, body: dict) -> str:
        model = body.get("model")
        if model is None or model in self.served:
            return model or self.model_name
        raise ApiError(404, "NotFoundError",
                       f"The model `{model}` does not exist. Valid aliases: {', '.join(self.served)}.",
                       "model")

    async def h_tokenize(self, request):
        body = await self._json(request)
        self._check_model(body)
        if "messages" in body:
            tokens = self.tok.encode(render_chat(body["messages"],
                                                 body.get("add_generation_prompt", True)))
        else:
            tokens = self.tok.encode(str(body.get("prompt", "")),
                                     add_bos=body.get("add_special_tokens", True))
        return http.json_response({"count": len(tokens), "max_model_len": self.max_model_len,
                                  "tokens": tokens, "token_strs": None})

    async def h_detokenize(self, request):
        body = await self._json(request)
        self._check_model(body)
        return http.json_response({"prompt": self.tok.decode(body.get("tokens") or [])})

    # ------------------------------------------------------------------ LMCache side ports
    async def h_worker_health(self, request):
        return http.json_response({"error_code": 0})

    async def h_worker_clear(self, request):
        body = request.json()
        n = self.lmc.clear(body.get("location"))
        return http.json_response({"num_tokens": n})

    async def h_p2p_fetch(self, request):
        body = request.json()
        found, data = self.lmc.serve_fetch(body.get("keys", []), body.get("tokens", []))
        return http.Response(data, headers={"X-Chunks-Found": str(found)},
                             content_type="application/octet-stream")

    async def h_p2p_lookup(self, request):
        body = request.json()
        return http.json_response({"num_chunks": self.lmc.count_prefix(body.get("keys", []))})

    # ------------------------------------------------------------------ request parsing
    def _sampling(self, body: dict, prompt_len: int, chat: bool) -> Sampling:
        mt = body.get("max_completion_tokens") if chat else None
        if mt is None:
            mt = body.get("max_tokens")
        if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool)):
            raise bad_request(str([{"type": "int_type", "loc": ("body", "max_tokens"),
                                    "msg": "Input should be a valid integer"}]), "max_tokens")
        if mt is not None and mt < 1:
            raise bad_request(f"max_tokens must be at least 1, got {mt}.", "max_tokens")
        if prompt_len > self.max_model_len:
            raise bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your prompt contains {prompt_len} input tokens, which exceeds this limit even "
                f"without any output tokens. Please reduce the length of the input prompt.",
                "input_tokens")
        remaining = self.max_model_len - prompt_len
        if remaining < 1:
            raise bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your request has {prompt_len} input tokens. Please reduce the length of the "
                f"input messages.", "input_tokens")
        max_tokens = remaining if mt is None else min(mt, remaining)
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else float(temperature)
        if temperature < 0:
            raise bad_request(f"temperature must be non-negative, got {temperature}.", "temperature")
        n = body.get("n", 1)
        if n not in (1, None):
            raise bad_request("The simulated engine supports n=1 only.", "n")
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        salt = body.get("cache_salt")
        if salt is not None and (not isinstance(salt, str) or not salt or len(salt) > 128
                                 or any(ch in "@/\\\x00" for ch in salt)):
            raise bad_request("Parameter 'cache_salt' must be a non-empty string of at most 128 characters "
                              "and must not contain '@', '/', '\\', or NUL.", "cache_salt")
        return Sampling(max_tokens, temperature, bool(body.get("ignore_eos", False)),
                        body.get("seed"), list(stop), salt or "", bool(body.get("return_token_ids")))

    def _base_id(self, request, body) -> str:
        rid = request.headers.get("X-Request-Id")
        if rid is not None:
            return rid
        rid = body.get("request_id")
        return str(rid) if rid else random_uuid()

    def _engine_id(self, external: str) -> str:
        return f"{external}-{random_uuid()[:8]}" if self.randomize_ids else external

    def _segments(self, text: str, add_bos: bool) -> list[list[int]] | None:
        """CacheBlend: token lists of the text's segments split on blend_special_str."""
        if self.lmc is None or not self.lmc.blending:
            return None
        parts = text.split(self.lmc.blend_sep)
        segs = [self.tok.encode(p) for p in parts]
        if add_bos:
            segs[0].insert(0, self.tok._cache["<|begin_of_text|>"])
        return segs

    def _tokens_from_segments(self, segs: list[list[int]]) -> list[int]:
        sep = self.tok.encode(self.lmc.blend_sep)
        out: list[int] = []
        for i, s in enumerate(segs):
            if i:
                out.extend(sep)
            out.extend(s)
        return out

    # ------------------------------------------------------------------ the engine
    def _log_request(self, ext_id: str, req_id: str, sp: Sampling) -> None:
        """vLLM's --enable-log-requests lines (request_logger.py, async_llm.py)."""
        params = (f"SamplingParams(n=1, presence_penalty=0.0, frequency_penalty=0.0, "
                  f"repetition_penalty=1.0, temperature={sp.temperature}, top_p=1.0, top_k=0, "
                  f"min_p=0.0, seed={sp.seed}, stop={sp.stop}, stop_token_ids=[], bad_words=[], "
                  f"include_stop_str_in_output=False, ignore_eos={sp.ignore_eos}, "
                  f"max_tokens={sp.max_tokens}, min_tokens=0, logprobs=None, prompt_logprobs=None, "
                  f"skip_special_tokens=True, spaces_between_special_tokens=True, "
                  f"truncate_prompt_tokens=None, structured_outputs=None, extra_args=None)")
        self.log.info("request_logger.py", 65,
                      f"Received request {ext_id}: params: {params}, lora_request: None.")
        self.log.info("async_llm.py", 578, f"Added request {req_id}.")

    async def generate(self, req_id: str, tokens: list[int], sp: Sampling,
                       segments: list[list[int]] | None = None,
                       ext_id: str | None = None, received: float | None = None) -> AsyncIterator[Event]:
        m, lat = self.metrics, self.latency
        n = len(tokens)
        t_arrival = time.perf_counter()
        pre_work = t_arrival - received if received is not None else 0.0  # parsing, tokenizing
        if self.args.enable_log_requests:
            self._log_request(ext_id or req_id, req_id, sp)
        self.waiting += 1
        acquired = False
        blocks_held = 0
        finish = "abort"
        out_tokens = 0
        try:
            await self.slots.acquire()
            acquired = True
            self.waiting -= 1
            self.running += 1
            t_sched = time.perf_counter()
            factor = lat.factor(self.running, self.args.max_num_seqs)
            block_keys = [k for _, _, k in chain_hashes(tokens, self.prefix.block_size, self.seed,
                                                        salted_domain(b"vllm", sp.cache_salt))]
            computed = self.prefix.lookup(block_keys, n)
            blocks_held = -(-n // self.prefix.block_size)
            self.prefix.allocate(blocks_held)
            ext = 0
            res: LookupResult | None = None
            lmc = self.lmc
            if lmc is not None:
                res = await lmc.lookup(tokens, segments, sp.cache_salt)
                hit = res.hit_tokens
                need = hit - computed
                if hit == n:
                    need -= 1
                need = max(need, 0)
                self.log.lmcache("INFO", logfmt.LMC_REQID,
                                 logfmt.reqid_line(req_id, n, computed, hit, need))
                ext = need
            m.prefix_queries.inc(n)
            m.prefix_hits.inc(computed)
            if self.connector:
                m.ext_queries.inc(n - computed)
                m.ext_hits.inc(ext)
            m.prompt_tokens.inc(n)
            m.prompt_tokens_cached.inc(computed + ext)
            m.req_prompt_tokens.observe(n)
            if lmc is not None:
                m.l_prompt_tokens.inc(n)
                m.l_vllm_hit_tokens.inc(computed)
            self.stats["prompt"] += n
            self.stats["q"] += n
            self.stats["h"] += computed
            self.stats["eq"] += n - computed
            self.stats["eh"] += ext
            # ---- prefill: compute what is not cached, load what LMCache has
            t_prefill = time.perf_counter()
            compute = n - computed - ext
            modeled = 0.0
            if ext > 0 and lmc is not None and res is not None:
                rr = await lmc.retrieve(req_id, res, computed)
                compute += max(0, rr.required - rr.retrieved)
                modeled += rr.modeled_s
                if lmc.blending:
                    modeled += lat.prefill_s(int(rr.retrieved * lmc.blend_ratio))
            modeled += lat.prefill_s(max(compute, 1))
            if self.args.sim_jitter_ms > 0:
                modeled += self._jitter.uniform(0.0, self.args.sim_jitter_ms) / 1000.0
            modeled *= factor
            # The sim's own work since the request was scheduled (tokenizing, hashing, lookups) is
            # part of the modeled time, not added to it: TTFT matches the configured latency.
            # What the decode needs is prepared before the wait, so the first token leaves on time.
            rng = self.gen.rng_for(tokens, sp.temperature, sp.seed)
            if self.args.sim_corrupt_reused_kv and computed + ext > 0:
                # the planted fault: KV that came from a cache is wrong, so the answer drifts
                rng = random.Random(rng.getrandbits(64) ^ 0x5EED)
            natural = self.gen.natural_length(rng)
            limit = sp.max_tokens if sp.ignore_eos else min(sp.max_tokens, natural)
            elapsed = time.perf_counter() - t_sched + pre_work
            if modeled > elapsed:
                await asyncio.sleep(modeled - elapsed)
            self.prefix.insert(block_keys)
            if lmc is not None and res is not None:
                await lmc.store(req_id, res)
            # ---- decode
            t_first = time.perf_counter()
            m.ttft.observe(t_first - t_arrival)
            m.queue_time.observe(t_sched - t_arrival)
            m.prefill_time.observe(t_first - t_prefill)
            prev = None
            text_so_far = ""
            t_prev = t_first
            step = lat.decode_s() * factor
            next_due = t_first
            extra_blocks = 0
            for i in range(limit):
                if i:
                    next_due += step
                    delay = next_due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    now = time.perf_counter()
                    m.itl.observe(now - t_prev)
                    t_prev = now
                tok = self.gen.next_token(rng, prev)
                prev = tok
                out_tokens += 1
                if (n + out_tokens) % self.prefix.block_size == 1 and out_tokens > 1:
                    self.prefix.allocate(1)
                    extra_blocks += 1
                piece = self.tok.decode_one(tok)
                text_so_far += piece
                fin = None
                if sp.stop and any(s in text_so_far for s in sp.stop):
                    fin = "stop"
                elif i == limit - 1:
                    fin = "length" if limit == sp.max_tokens else "stop"
                if fin:
                    finish = fin
                yield Event(tok, piece, fin, n, out_tokens, computed + ext)
                if fin:
                    break
            blocks_held += extra_blocks
            t_end = time.perf_counter()
            m.decode_time.observe(t_end - t_first)
            m.inference_time.observe(t_end - t_sched)
            m.e2e.observe(t_end - t_arrival)
            if out_tokens > 1:
                m.tpot.observe((t_end - t_first) / (out_tokens - 1))
        finally:
            if acquired:
                self.running -= 1
                self.slots.release()
            else:
                self.waiting -= 1
            self.prefix.release(blocks_held)
            m.generation_tokens.inc(out_tokens)
            m.req_gen_tokens.observe(out_tokens)
            m.success[finish if finish in ("stop", "length") else "abort"].inc()
            if finish == "abort" and self.args.enable_log_requests:
                self.log.info("async_llm.py", 922, f"Aborted request(s) {req_id}.")
            self.stats["gen"] += out_tokens
            self.stats["requests"] += 1

    # ------------------------------------------------------------------ OpenAI endpoints
    def _prompts(self, body: dict) -> list[tuple[list[int], list[list[int]] | None]]:
        prompt = body.get("prompt")
        if prompt is None:
            raise bad_request(str([{"type": "missing", "loc": ("body", "prompt"),
                                    "msg": "Field required"}]), "prompt")
        if isinstance(prompt, str):
            items: list = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt):
            items = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(x, (str, list)) for x in prompt):
            items = prompt
        else:
            raise bad_request("prompt must be a string, a list of strings, or token ids", "prompt")
        out = []
        for p in items:
            if isinstance(p, str):
                segs = self._segments(p, add_bos=True)
                toks = (self._tokens_from_segments(segs) if segs is not None
                        else self.tok.encode(p, add_bos=True))
                out.append((toks, segs))
            elif isinstance(p, list) and all(isinstance(x, int) for x in p):
                out.append((list(p), None))
            else:
                raise bad_request("prompt must be a string, a list of strings, or token ids",
                                  "prompt")
        return out

    async def h_completions(self, request: http.Request):
        body = await self._json(request)
        model = self._check_model(body)
        prompts = self._prompts(body)
        sps = [self._sampling(body, len(t), chat=False) for t, _ in prompts]
        base = f"cmpl-{self._base_id(request, body)}"
        created = int(time.time())
        stream = bool(body.get("stream", False))
        so = body.get("stream_options") or {}
        include_usage = bool(so.get("include_usage")) if stream else True
        continuous = include_usage and bool(so.get("continuous_usage_stats"))
        gens = [self.generate(self._engine_id(f"{base}-{i}"), t, sp, segs, f"{base}-{i}", request.received)
                for i, ((t, segs), sp) in enumerate(zip(prompts, sps, strict=True))]

        def chunk(i: int, text: str, fin: str | None, usage=None, tok: int | None = None) -> dict:
            c = {"index": i, "text": text, "logprobs": None, "finish_reason": fin, "stop_reason": None}
            if sps[i].return_token_ids:
                c["token_ids"] = [tok] if tok is not None else []
            return {"id": base, "object": "text_completion", "created": created, "model": model,
                    "choices": [c], "usage": usage}

        if stream:
            return await self._stream(request, gens, chunk, base, created, model,
                                      "text_completion", include_usage, continuous)
        results = await asyncio.gather(*[self._collect(g) for g in gens])
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "cached": 0}
        for i, (text, fin, ev) in enumerate(results):
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": fin,
                            "stop_reason": None, "prompt_logprobs": None})
            usage["prompt_tokens"] += ev.prompt_tokens
            usage["completion_tokens"] += ev.completion_tokens
            usage["cached"] += ev.cached_tokens
        return http.json_response({"id": base, "object": "text_completion", "created": created,
                                  "model": model, "choices": choices,
                                  "usage": self._usage(usage), "kv_transfer_params": None})

    def _usage(self, u: dict) -> dict:
        out = {"prompt_tokens": u["prompt_tokens"],
               "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
               "completion_tokens": u["completion_tokens"], "prompt_tokens_details": None}
        if getattr(self.args, "enable_prompt_tokens_details", False):
            out["prompt_tokens_details"] = {"cached_tokens": u.get("cached", 0)}
        return out

    async def _collect(self, gen: AsyncIterator[Event]) -> tuple[str, str, Event]:
        parts, last = [], Event(None, "", "length")
        async for ev in gen:
            parts.append(ev.text)
            last = ev
        return "".join(parts), last.finish or "length", last

    async def _stream(self, request, gens, chunk, base, created, model, obj, include_usage,
                      continuous, chat_first=None) -> http.StreamResponse:
        resp = http.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                        "Cache-Control": "no-cache"})
        if self.args.enable_request_id_headers:
            resp.headers["X-Request-Id"] = request.headers.get("X-Request-Id", uuid.uuid4().hex)
        await resp.prepare(request)
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "cached": 0}
        per = {}

        async def send(d: dict) -> None:
            await resp.write(b"data: " + json.dumps(d, separators=(",", ":")).encode() + b"\n\n")

        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i, g):
            try:
                async for ev in g:
                    await queue.put((i, ev))
            finally:
                await queue.put((i, None))

        async def events() -> AsyncIterator[tuple[int, Event]]:
            if len(gens) == 1:  # one prompt: no task hop between a token and its chunk
                async for ev in gens[0]:
                    yield 0, ev
                return
            live = len(gens)
            while live:
                i, ev = await queue.get()
                if ev is None:
                    live -= 1
                    continue
                yield i, ev

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)] if len(gens) > 1 else []
        try:
            if chat_first is not None:
                for i in range(len(gens)):
                    await send(chat_first(i))
            async with contextlib.aclosing(events()) as evs:
                async for i, ev in evs:
                    per[i] = ev
                    usage = None
                    if continuous:
                        usage = self._usage({"prompt_tokens": ev.prompt_tokens,
                                             "completion_tokens": ev.completion_tokens,
                                             "cached": ev.cached_tokens})
                    await send(chunk(i, ev.text, ev.finish, usage, ev.token))
            for ev in per.values():
                totals["prompt_tokens"] += ev.prompt_tokens
                totals["completion_tokens"] += ev.completion_tokens
                totals["cached"] += ev.cached_tokens
            if include_usage:
                await send({"id": base, "object": obj, "created": created, "model": model,
                            "choices": [], "usage": self._usage(totals)})
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            for t in tasks:
                t.cancel()
            raise
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
            if not tasks:  # iterated in place: end it now (slots, block counts), not at GC
                await gens[0].aclose()
        return resp

    async def h_chat(self, request: http.Request):
        body = await self._json(request)
        model = self._check_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request(str([{"type": "missing", "loc": ("body", "messages"),
                                    "msg": "Field required"}]), "messages")
        text = render_chat(messages, body.get("add_generation_prompt", True))
        segs = self._segments(text, add_bos=False)
        tokens = self._tokens_from_segments(segs) if segs is not None else self.tok.encode(text)
        sp = self._sampling(body, len(tokens), chat=True)
        base = f"chatcmpl-{self._base_id(request, body)}"
        created = int(time.time())
        stream = bool(body.get("stream", False))
        so = body.get("stream_options") or {}
        include_usage = bool(so.get("include_usage")) if stream else True
        continuous = include_usage and bool(so.get("continuous_usage_stats"))
        gen = self.generate(self._engine_id(base), tokens, sp, segs, base, request.received)
        if stream:
            def first(i):
                return {"id": base, "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [{"index": i, "delta": {"role": "assistant",
                                                                           "content": ""},
                                                     "logprobs": None, "finish_reason": None}]}

            def chunk(i, piece, fin, usage=None, tok=None):
                return {"id": base, "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [{"index": i, "delta": {"content": piece},
                                                     "logprobs": None, "finish_reason": fin,
                                                     "stop_reason": None}], "usage": usage}

            return await self._stream(request, [gen], chunk, base, created, model,
                                      "chat.completion.chunk", include_usage, continuous, first)
        text_out, fin, ev = await self._collect(gen)
        return http.json_response({
            "id": base, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text_out,
                                                 "refusal": None, "annotations": None,
                                                 "audio": None, "function_call": None,
                                                 "tool_calls": [], "reasoning_content": None},
                         "logprobs": None, "finish_reason": fin, "stop_reason": None}],
            "service_tier": None, "system_fingerprint": None,
            "usage": self._usage({"prompt_tokens": ev.prompt_tokens,
                                  "completion_tokens": ev.completion_tokens,
                                  "cached": ev.cached_tokens}),
            "prompt_logprobs": None, "kv_transfer_params": None})

    # ------------------------------------------------------------------ background
    async def stats_loop(self) -> None:
        interval = float(self.env.get("VLLM_LOG_STATS_INTERVAL", "10"))
        last_t = time.perf_counter()
        while True:
            await asyncio.sleep(interval)
            now = time.perf_counter()
            s, l_ = self.stats, self._last_stats
            dt = now - last_t
            last_t = now
            if s == l_ and not self.running and not self.waiting:
                continue
            parts = [f"Avg prompt throughput: {(s['prompt'] - l_['prompt']) / dt:.1f} tokens/s",
                     f"Avg generation throughput: {(s['gen'] - l_['gen']) / dt:.1f} tokens/s",
                     f"Running: {self.running} reqs", f"Waiting: {self.waiting} reqs",
                     f"GPU KV cache usage: {self.prefix.usage() * 100:.1f}%"]
            if s["q"]:
                parts.append(f"Prefix cache hit rate: {s['h'] / s['q'] * 100:.1f}%")
            if self.connector and s["eq"]:
                parts.append(f"External prefix cache hit rate: {s['eh'] / s['eq'] * 100:.1f}%")
            self.log.info("loggers.py", 335, "Engine 000: " + ", ".join(parts))
            self._last_stats = dict(s)

    async def serve(self, stop: asyncio.Event) -> None:
        a = self.args
        self.slots = asyncio.Semaphore(a.max_num_seqs)
        if self.dev_mode:
            self.log.warning("__init__.py", 44, "SECURITY WARNING: Development endpoints are "
                                                "enabled! This should NOT be used in production!")
        if self.latency.startup_s > 0:
            self.log.info("sim", 0, f"[sim] simulating model loading for {self.latency.startup_s} s")
            try:
                await asyncio.wait_for(stop.wait(), self.latency.startup_s)
                return
            except asyncio.TimeoutError:
                pass
        # LMCache side ports first (the connector starts before the API server answers)
        for host, port, router in self.build_lmcache_apps():
            srv = http.Server(router)
            await srv.start(host, port)
            self.servers.append(srv)
        srv = http.Server(self.build_router(), self._middleware, self._error)
        await srv.start(a.host, a.port)
        self.servers.append(srv)
        if self.lmc is not None and self.lmc.controller:
            self.tasks.append(asyncio.create_task(self.lmc.register_loop()))
        if not a.disable_log_stats:
            self.tasks.append(asyncio.create_task(self.stats_loop()))
        url = f"http://{a.host}:{a.port}"
        self.log.info("entry.py", 140, f"Starting vLLM server on {url}")
        self.log.info("server.py", 84, f"Started server process [{os.getpid()}]")
        self.log.info("on.py", 48, "Waiting for application startup.")
        self.log.info("on.py", 62, "Application startup complete.")
        await stop.wait()

    async def shutdown(self) -> None:
        self.log.info("server.py", 264, "Shutting down")
        for t in self.tasks:
            t.cancel()
        if self.lmc is not None:
            try:
                await asyncio.wait_for(self.lmc.deregister(), 0.3)
            except (asyncio.TimeoutError, Exception):
                pass
        self.log.info("on.py", 67, "Waiting for application shutdown.")
        for srv in reversed(self.servers):
            try:
                await asyncio.wait_for(srv.close(0.3), 0.4)
            except (asyncio.TimeoutError, Exception):
                pass
        self.log.info("on.py", 76, "Application shutdown complete.")
        self.log.info("server.py", 94, f"Finished server process [{os.getpid()}]")
        self.log.info("sim", 0, f"[sim] kvorch simulated engine stopped after "
                                f"{self.stats['requests']} requests")


_FAULT_CHILD = "import signal, sys, time\nif sys.argv[1] == '1': signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(3600)"


def _plant_faults(args: Any, log: Any) -> None:
    """Planted misbehaviour for the fault suite (``--sim-fault-*``): children, a setsid grandchild,
    ignored SIGTERM. Every child inherits the environment (and so the orchestrator's marker)."""
    import subprocess

    stubborn = "1" if args.sim_fault_ignore_sigterm else "0"
    if args.sim_fault_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for _ in range(max(0, args.sim_fault_children)):
        child = subprocess.Popen([sys.executable, "-c", _FAULT_CHILD, stubborn], stdin=subprocess.DEVNULL)
        log.info("sim", 0, f"[sim] fault: child process {child.pid} (same process group)")
    if args.sim_fault_setsid_grandchild:
        # double fork: the middle process starts the grandchild in a new session and exits
        mid = subprocess.Popen([sys.executable, "-c",
                                "import subprocess, sys; g = subprocess.Popen([sys.executable, '-c', sys.argv[1], "
                                "sys.argv[2]], start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL); print(g.pid)",
                                _FAULT_CHILD, stubborn], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        out, _ = mid.communicate(timeout=30)
        log.info("sim", 0, f"[sim] fault: grandchild {out.strip()} called setsid (own session and group)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    engine = Engine(args)
    _plant_faults(args, engine.log)
    engine.startup_lines()
    try:
        engine.load_lmcache()
    except SystemExit as e:
        engine.log.vllm("ERROR", "core.py", 708, f"EngineCore failed to start. {e}")
        return 1

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT,) if args.sim_fault_ignore_sigterm else (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.sim_fault_exit_after_s > 0:
            def crash() -> None:
                engine.log.vllm("ERROR", "core.py", 1, f"[sim] fault: exiting after {args.sim_fault_exit_after_s} s")
                sys.stdout.flush()
                os._exit(3)
            loop.call_later(args.sim_fault_exit_after_s + engine.latency.startup_s, crash)
        try:
            await engine.serve(stop)
        except OSError as e:
            engine.log.vllm("ERROR", "api_server.py", 1, f"Failed to start the server: {e}")
            await engine.shutdown()
            return 1
        await engine.shutdown()
        return 0

    return run_precise(run())


if __name__ == "__main__":
    sys.exit(main())
