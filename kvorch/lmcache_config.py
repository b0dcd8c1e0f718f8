"""LMCache 0.5.6 configuration: the key set, env parsing, file+env merging, validation.

Everything here was read from the LMCache 0.5.6 wheel (``lmcache/v1/config.py`` and
``lmcache/v1/config_base.py``); nothing imports LMCache (it takes 2 s and needs torch).

How LMCache 0.5.6 loads its configuration (``lmcache/integration/vllm/utils.py``,
``lmcache_get_or_create_config``):

* ``LMCACHE_CONFIG_FILE`` set: ``from_file(path)`` (``yaml.safe_load``; every value, from
  the file too, goes through the key's converter, so ``p2p_init_ports: 8200`` becomes
  ``[8200]``), then ``update_config_from_env()``: every ``LMCACHE_<KEY>`` env variable
  **overrides** the file. Then ``validate()``.
* not set: two warnings ("No LMCache configuration file is set. ..."), ``from_env()``,
  ``validate()``.
* Keys are resolved by ``_resolve_config_aliases``: a key in ``_DEPRECATED_CONFIGS`` logs
  its deprecation message (and is mapped if it has an alias); a defined key is kept; any
  other key logs ``Unknown configuration key: <key> (source: <source>)`` and is DROPPED.
  Note: most entries of LMCache's ``_CONFIG_ALIASES`` (``controller_url``, ``nixl_role``,
  ``lmcache_worker_port``, ``enable_xpyd``, ...) are *not* in ``_DEPRECATED_CONFIGS``, so
  0.5.6 does not map them: they are reported as unknown and ignored.
* Only env variables named after a defined key or an alias are read
  (``LMCACHE_<KEY.upper()>``); other ``LMCACHE_*`` variables are silently ignored.
* Env values: surrounding quotes are removed (``_parse_quoted_string``: ``ast.literal_eval``
  for a quoted literal), then the converter: bool is ``value.strip().lower() in ("true",
  "1")`` (so "yes" is False), lists are comma-separated (``"8200,8202"``), ``extra_config``
  is JSON. A failing conversion logs ``Failed to parse LMCACHE_<KEY>='<raw>': <error>``
  and keeps the previous (file or default) value.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = [
    "LMCACHE_VERSION", "CONFIG_KEYS", "KeySpec", "RENAMED_KEYS", "LMCACHE_ALIASES", "DEPRECATED_KEYS",
    "CONFIG_FILE_ENV", "ENV_PREFIX", "ENV_SOURCE", "unknown_keys", "key_hint", "unknown_key_warning",
    "parse_env", "load_config", "defaults", "convert", "parse_quoted_string", "parse_file_values",
    "read_config_file", "file_source", "validate_semantics", "semantic_warnings",
    "apply_validate_adjustments", "warning_origin",
]

LMCACHE_VERSION = "0.5.6"
ENV_PREFIX = "LMCACHE_"
CONFIG_FILE_ENV = "LMCACHE_CONFIG_FILE"


@dataclass(frozen=True)
class KeySpec:
    name: str
    type: str  # the annotation LMCache 0.5.6 declares, e.g. "Optional[list[int]]"
    default: Any
    kind: str  # converter: int float str bool local_disk int_list float_list str_list json str_or_list hidden_states_mode
    description: str

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _k(name: str, type_: str, default: Any, kind: str, description: str) -> tuple[str, KeySpec]:
    return name, KeySpec(name, type_, default, kind, description)


# Every key of LMCache 0.5.6's _CONFIG_DEFINITIONS (108), in its order.
CONFIG_KEYS: dict[str, KeySpec] = dict([
    _k('chunk_size', 'int', 256, 'int', 'tokens per KV chunk (the unit of storage and of prefix hits)'),
    _k('local_cpu', 'bool', True, 'bool', 'keep KV chunks in the local CPU memory tier'),
    _k('max_local_cpu_size', 'float', 5.0, 'float', 'CPU tier size in GB'),
    _k('local_cpu_use_hugepages', 'bool', False, 'bool', 'back the CPU pool with hugepages'),
    _k('reserve_local_cpu_size', 'float', 0.0, 'float', 'GB of CPU memory to keep free'),
    _k('local_disk', 'Optional[str]', None, 'local_disk', 'local disk tier path(s), optionally file://, comma-separated'),
    _k('local_disk_path_sharding', 'str', 'by_gpu', 'str', 'how disk paths are sharded across GPUs'),
    _k('max_local_disk_size', 'float', 0.0, 'float', 'disk tier size in GB'),
    _k('remote_url', 'Optional[str]', None, 'str', 'remote storage backend URL (lm://, redis://, ...)'),
    _k('remote_serde', 'Optional[str]', 'naive', 'str', 'serializer for the remote backend'),
    _k('use_layerwise', 'bool', False, 'bool', 'store/retrieve KV layer by layer (required by CacheBlend)'),
    _k('save_decode_cache', 'bool', False, 'bool', 'also store KV produced during decode'),
    _k('pre_caching_hash_algorithm', 'str', 'builtin', 'str', 'hash used for chunk keys (builtin = Python hash, depends on PYTHONHASHSEED)'),
    _k('enable_blending', 'bool', False, 'bool', 'enable CacheBlend (non-prefix reuse of segments)'),
    _k('blend_recompute_ratios', 'Optional[list[float]]', None, 'float_list', 'fraction of tokens CacheBlend recomputes'),
    _k('blend_thresholds', 'Optional[list[float]]', None, 'float_list', 'CacheBlend thresholds'),
    _k('blend_check_layers', 'list[int]', None, 'int_list', 'layers at which CacheBlend selects tokens to recompute'),
    _k('blend_min_tokens', 'int', 256, 'int', 'minimum segment length for blending'),
    _k('blend_special_str', 'str', ' # # ', 'str', 'separator string between blend segments'),
    _k('retrieve_locations', 'Optional[list[str]]', None, 'str_list', 'storage backends to retrieve from'),
    _k('store_location', 'Optional[str]', None, 'str', 'storage backend to store into'),
    _k('enable_p2p', 'bool', False, 'bool', 'share KV between instances peer to peer (needs the controller)'),
    _k('p2p_host', 'Optional[str]', None, 'str', "this instance's routable address for P2P"),
    _k('p2p_init_ports', 'Optional[list[int]]', None, 'int_list', 'P2P init port(s), one per worker'),
    _k('p2p_lookup_ports', 'Optional[list[int]]', None, 'int_list', 'P2P lookup port(s), one per worker'),
    _k('mp_host', 'Optional[str]', None, 'str', 'MP server host (SGLang)'),
    _k('mp_port', 'int', 5555, 'int', 'MP server port (SGLang)'),
    _k('enable_controller', 'bool', False, 'bool', 'register with an LMCache controller'),
    _k('lmcache_instance_id', 'Optional[str]', None, 'str', 'instance id reported to the controller (auto-generated if unset)'),
    _k('controller_pull_url', 'Optional[str]', None, 'str', 'controller pull socket host:port'),
    _k('controller_reply_url', 'Optional[str]', None, 'str', 'controller reply socket host:port'),
    _k('lmcache_worker_ports', 'Optional[list[int]]', None, 'int_list', 'LMCache worker port(s), one per worker'),
    _k('lmcache_worker_ids', 'Optional[list[int]]', None, 'int_list', 'ranks that run an LMCache worker'),
    _k('lmcache_worker_heartbeat_delay_time', 'int', 10, 'int', 'seconds before the first heartbeat'),
    _k('lmcache_worker_heartbeat_time', 'Optional[int]', None, 'int', 'heartbeat period in seconds (None = off)'),
    _k('enable_pd', 'bool', False, 'bool', 'disaggregated prefill (PD) mode'),
    _k('pd_role', 'Optional[str]', None, 'str', 'PD role: sender | receiver'),
    _k('pd_buffer_size', 'Optional[int]', None, 'int', 'PD transfer buffer size in bytes'),
    _k('pd_buffer_device', 'Optional[str]', None, 'str', 'PD buffer device (cuda | cpu)'),
    _k('pd_peer_host', 'Optional[str]', None, 'str', 'PD peer (decoder) host'),
    _k('pd_peer_init_port', 'Optional[list[int]]', None, 'int_list', 'PD peer init port(s)'),
    _k('pd_peer_alloc_port', 'Optional[list[int]]', None, 'int_list', 'PD peer alloc port(s)'),
    _k('pd_peer_query_port', 'Optional[list[int]]', None, 'int_list', 'PD peer query port(s)'),
    _k('pd_proxy_host', 'Optional[str]', None, 'str', 'PD proxy host'),
    _k('pd_proxy_port', 'Optional[int]', None, 'int', 'PD proxy port'),
    _k('pd_allocation_timeout_sec', 'float', float("inf"), 'float', 'Maximum seconds to retry memory allocation before giving up'),
    _k('pd_shutdown_timeout_sec', 'float', 5.0, 'float', 'Maximum seconds to wait for event loop shutdown and thread join'),
    _k('pd_condition_poll_interval_sec', 'float', 0.005, 'float', 'Polling interval in seconds when waiting on a threading/asyncio Condition'),
    _k('pd_max_prefill_len', 'int', 0, 'int', 'Maximum prefill token length that the PD buffer must be able to hold'),
    _k('pd_backend_mode', 'Optional[str]', 'async', 'str', "Select the PD backend implementation: 'async' (default) uses the asyncio-based implementation; 'sync' uses the original thread-based synchronous implementation"),
    _k('pd_skip_proxy_notification', 'bool', False, 'bool', 'do not notify the PD proxy'),
    _k('pd_bidirectional', 'bool', False, 'bool', 'bidirectional PD transfer'),
    _k('transfer_channel', 'Optional[str]', None, 'str', 'P2P/PD transfer channel (e.g. nixl)'),
    _k('nixl_backends', 'Optional[list[str]]', None, 'str_list', 'NIXL backends (e.g. UCX)'),
    _k('nixl_buffer_size', 'Optional[int]', None, 'int', 'NIXL buffer size in bytes'),
    _k('nixl_buffer_device', 'Optional[str]', None, 'str', 'NIXL buffer device'),
    _k('gds_path', 'Optional[str]', None, 'str', 'GPU Direct Storage path'),
    _k('gds_path_sharding', 'str', 'by_gpu', 'str', 'how GDS paths are sharded'),
    _k('gds_buffer_size', 'Optional[int]', None, 'int', 'GDS buffer size'),
    _k('maru_path', 'Optional[str]', None, 'str', 'Maru CXL shared-memory path'),
    _k('maru_pool_size', 'float', 4.0, 'float', 'Maru pool size in GB'),
    _k('use_gds', 'bool', True, 'bool', 'use GPU Direct Storage for the GDS backend'),
    _k('gds_backend', 'str', 'cufile', 'str', 'GDS backend implementation'),
    _k('audit_actual_remote_url', 'Optional[str]', None, 'str', '(deprecated) audited remote URL'),
    _k('internal_api_server_host', 'str', '127.0.0.1', 'str', 'internal API server bind host'),
    _k('extra_config', 'Optional[dict]', None, 'json', 'free-form extra settings (dict; JSON in env)'),
    _k('save_unfull_chunk', 'bool', False, 'bool', 'also store the trailing partial chunk'),
    _k('blocking_timeout_secs', 'int', 10, 'int', 'timeout of blocking operations in seconds'),
    _k('external_lookup_client', 'Optional[str]', None, 'str', 'external lookup client URL'),
    _k('py_enable_gc', 'bool', True, 'bool', 'keep Python GC enabled'),
    _k('cache_policy', 'str', 'LRU', 'str', 'eviction policy (LRU, ...)'),
    _k('numa_mode', 'Optional[str]', None, 'str', 'NUMA placement mode'),
    _k('enable_async_loading', 'bool', False, 'bool', 'load KV asynchronously'),
    _k('internal_api_server_enabled', 'bool', False, 'bool', 'start the internal API server'),
    _k('internal_api_server_port_start', 'int', 6999, 'int', 'first port of the internal API server'),
    _k('priority_limit', 'Optional[int]', None, 'int', 'only cache requests up to this priority'),
    _k('internal_api_server_include_index_list', 'Optional[list[int]]', None, 'int_list', 'workers that start the internal API server'),
    _k('internal_api_server_socket_path_prefix', 'Optional[str]', None, 'str', 'unix socket prefix for the internal API server'),
    _k('runtime_plugin_locations', 'Optional[list[str]]', None, 'str_or_list', 'runtime plugin paths'),
    _k('storage_plugins', 'Optional[list[str]]', None, 'str_list', 'storage backend plugins'),
    _k('remote_storage_plugins', 'Optional[list[str]]', None, 'str_list', 'remote storage plugins'),
    _k('lookup_timeout_ms', 'int', 3000, 'int', 'lookup timeout in ms'),
    _k('min_retrieve_tokens', 'int', 0, 'int', 'Minimum number of hit tokens required to perform retrieve'),
    _k('hit_miss_ratio', 'Optional[float]', None, 'float', 'simulated hit/miss ratio (testing)'),
    _k('lookup_server_worker_ids', 'Optional[list[int]]', None, 'int_list', 'ranks that run a lookup server'),
    _k('enable_scheduler_bypass_lookup', 'bool', False, 'bool', 'scheduler bypasses the lookup server'),
    _k('script_allowed_imports', 'Optional[list[str]]', None, 'str_list', 'imports allowed in /run_script'),
    _k('run_script_api_enabled', 'bool', False, 'bool', 'enable the /run_script API (executes code)'),
    _k('enable_lazy_memory_allocator', 'bool', False, 'bool', 'Enable lazy memory allocator to reduce initial memory footprint'),
    _k('lazy_memory_initial_ratio', 'float', 0.2, 'float', 'Initial memory allocation ratio (0.0-1.0)'),
    _k('lazy_memory_expand_trigger_ratio', 'float', 0.5, 'float', 'Memory usage ratio (0.0-1.0) that triggers automatic expansion'),
    _k('lazy_memory_step_ratio', 'float', 0.1, 'float', 'Memory expansion step ratio (0.0-1.0)'),
    _k('lazy_memory_safe_size', 'float', 0.0, 'float', 'Safe threshold size in GB'),
    _k('enable_chunk_statistics', 'bool', False, 'bool', 'Enable chunk statistics tracking'),
    _k('chunk_statistics_auto_start_statistics', 'bool', False, 'bool', 'Auto-start statistics on init'),
    _k('chunk_statistics_auto_exit_timeout_hours', 'float', 0.0, 'float', 'Auto-stop timeout in hours (0=disabled)'),
    _k('chunk_statistics_auto_exit_target_unique_chunks', 'int', 0, 'int', 'Auto-stop at target unique chunks'),
    _k('chunk_statistics_strategy', 'str', 'memory_bloom_filter', 'str', 'Recording strategy: memory_bloom_filter or file_hash'),
    _k('enable_kv_events', 'bool', False, 'bool', 'emit KV cache events'),
    _k('use_gpu_connector_v3', 'bool', False, 'bool', 'use the v3 paged GPU connector'),
    _k('pin_timeout_sec', 'int', 300, 'int', 'Maximum duration in seconds that a memory object can remain pinned'),
    _k('pin_check_interval_sec', 'int', 30, 'int', 'Interval in seconds between PinMonitor timeout checks'),
    _k('remote_config_url', 'Optional[str]', None, 'str', 'remote configuration service URL'),
    _k('app_id', 'Optional[str]', None, 'str', 'application id sent to the remote configuration service'),
    _k('enable_hidden_state_cache', 'bool', False, 'bool', 'Enable caching of thinker hidden states alongside KV cache entries for vLLM-Omni multi-stage pipelines'),
    _k('max_hidden_state_cpu_size', 'float', 2.0, 'float', 'Maximum size in GB of pinned CPU memory for the hidden state cache'),
    _k('hidden_state_layers', 'Optional[list[int]]', None, 'int_list', 'Optional allowlist of **storage layer indices** accepted by HiddenStateStore.store_hidden_states'),
    _k('hidden_states_retrieve_mode', 'str', 'prefix_strict', 'hidden_states_mode', 'How to assemble hidden_states_out on retrieve() when some KV-hit chunks lack a paired hidden entry'),
])

# LMCache 0.5.6 _CONFIG_ALIASES (old name -> new name) ...
LMCACHE_ALIASES: dict[str, str] = {
    "enable_xpyd": "enable_pd",
    "nixl_peer_host": "pd_peer_host",
    "nixl_peer_init_port": "pd_peer_init_port",
    "nixl_peer_alloc_port": "pd_peer_alloc_port",
    "nixl_proxy_host": "pd_proxy_host",
    "nixl_proxy_port": "pd_proxy_port",
    "nixl_buffer_size": "pd_buffer_size",  # also a defined key in 0.5.6: kept as is
    "nixl_role": "pd_role",
    "controller_url": "controller_pull_url",
    "lmcache_worker_port": "lmcache_worker_ports",
    "plugin_locations": "runtime_plugin_locations",
    "external_backends": "storage_plugins",
}
# ... and _DEPRECATED_CONFIGS (name -> the warning it logs). Only these are mapped (if aliased).
DEPRECATED_KEYS: dict[str, str] = {
    "nixl_peer_port": "nixl_peer_port is deprecated, use nixl_receiver_port instead",
    "plugin_locations": "plugin_locations is deprecated, use runtime_plugin_locations instead",
    "external_backends": "external_backends is deprecated, use storage_plugins instead",
}

# Old or mistaken key -> the 0.5.6 key (or a hint). For messages; 0.5.6 itself maps only
# plugin_locations and external_backends, and ignores the rest ("Unknown configuration key").
RENAMED_KEYS: dict[str, str] = {
    **{k: v for k, v in LMCACHE_ALIASES.items() if k != "nixl_buffer_size"},
    "nixl_peer_port": "pd_peer_init_port (nixl_peer_port is ignored by 0.5.6)",
    "p2p_init_port": "p2p_init_ports",
    "p2p_lookup_port": "p2p_lookup_ports",
    "lmcache_worker_id": "lmcache_worker_ids",
    "controller_push_url": "controller_reply_url",
    "enable_nixl": "enable_pd (with pd_role, pd_buffer_size, pd_buffer_device, transfer_channel) "
                   "or enable_p2p with transfer_channel: nixl",
    "nixl_receiver_host": "pd_peer_host",
    "nixl_receiver_port": "pd_peer_init_port",
    "lookup_url": "enable_p2p + enable_controller (0.5.6 P2P looks up through the controller)",
    "distributed_url": "p2p_host + p2p_init_ports + p2p_lookup_ports",
    "max_local_cache_size": "max_local_cpu_size",
    "local_device": "local_cpu / local_disk",
}


# --------------------------------------------------------------------------- converters
def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ["true", "1"]


def _to_int_list(v: Any) -> list[int] | None:
    if v is None:
        return None
    if isinstance(v, list):
        return [int(x) for x in v]
    if isinstance(v, int):
        return [v]
    return [int(p) for p in (p.strip() for p in str(v).split(",")) if p]


def _to_float_list(v: Any) -> list[float] | None:
    if v is None:
        return None
    if isinstance(v, list):
        return [float(x) for x in v]
    if isinstance(v, float):
        return [v]
    return [float(p) for p in (p.strip() for p in str(v).split(",")) if p]


def _to_str_list(v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, list):
        return v
    return [p for p in (p.strip() for p in v.split(",")) if p]


def _parse_local_disk(v: Any) -> str | None:
    if v is None:
        return None
    parts = [p.strip() for p in str(v).split(",") if p.strip()]
    if not parts:
        return None
    return ",".join(p[7:] if p.startswith("file://") else p for p in parts)


def _to_json(v: Any) -> Any:
    return v if isinstance(v, dict) else json.loads(v) if v else None


def _to_str_or_list(v: Any) -> list:
    return v if isinstance(v, list) else [v] if v else []


def _to_hidden_states_mode(v: Any) -> str:
    if v is None:
        return "prefix_strict"
    s = str(v).strip().lower().replace("-", "_")
    if s in ("prefix_strict", "prefixstrict"):
        return "prefix_strict"
    if s in ("skip_missing_chunks", "skipmissingchunks", "legacy"):
        return "skip_missing_chunks"
    raise ValueError(
        "hidden_states_retrieve_mode must be 'prefix_strict' or "
        f"'skip_missing_chunks', got {v!r}"
    )


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": _to_bool,
    "local_disk": _parse_local_disk,
    "int_list": _to_int_list,
    "float_list": _to_float_list,
    "str_list": _to_str_list,
    "json": _to_json,
    "str_or_list": _to_str_or_list,
    "hidden_states_mode": _to_hidden_states_mode,
}


def convert(name: str, value: Any) -> Any:
    """Apply key ``name``'s LMCache converter (None stays None). Raises ValueError/JSONDecodeError."""
    if value is None:
        return None
    return CONVERTERS[CONFIG_KEYS[name].kind](value)


def parse_quoted_string(value: str) -> str:
    """LMCache's ``_parse_quoted_string``: strip, and unquote '...' or "..." (with escapes)."""
    if not value:
        return value
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in ("'", '"'):
        try:
            evaluated = ast.literal_eval(value)
            if isinstance(evaluated, str):
                return evaluated
        except (ValueError, SyntaxError):
            return value[1:-1]
    return value


# --------------------------------------------------------------------------- key checks
def _resolve(d: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """LMCache's ``_resolve_config_aliases``: (kept keys, warnings it logs)."""
    resolved: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in d.items():
        if key in DEPRECATED_KEYS:
            warnings.append(f"{DEPRECATED_KEYS[key]} (source: {source})")
            resolved[LMCACHE_ALIASES.get(key, key)] = value
        elif key in CONFIG_KEYS:
            resolved[key] = value
        else:
            warnings.append(f"Unknown configuration key: {key} (source: {source})")
    return resolved, warnings


def unknown_key_warning(key: str, source: str) -> str:
    """The exact text LMCache 0.5.6 logs (WARNING) for a key it does not know."""
    return f"Unknown configuration key: {key} (source: {source})"


def file_source(path: str) -> str:
    return f"file: {path}"


ENV_SOURCE = "environment variables"


def unknown_keys(d: Mapping[str, Any]) -> list[str]:
    """Keys of ``d`` that LMCache 0.5.6 does not use (warned about and ignored).

    ``plugin_locations``/``external_backends`` are deprecated but mapped, so they are not
    listed; ``nixl_peer_port`` is deprecated and then dropped, so it is.
    """
    out = []
    for key in d:
        if key in CONFIG_KEYS:
            continue
        if key in DEPRECATED_KEYS and LMCACHE_ALIASES.get(key) in CONFIG_KEYS:
            continue
        out.append(key)
    return out


def key_hint(key: str) -> str | None:
    """A suggestion for an unknown key: its 0.5.6 name, or the closest known key."""
    if key in RENAMED_KEYS:
        return RENAMED_KEYS[key]
    close = difflib.get_close_matches(key, list(CONFIG_KEYS), n=1, cutoff=0.75)
    return close[0] if close else None


# --------------------------------------------------------------------------- env + file
def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name in list(CONFIG_KEYS) + list(LMCACHE_ALIASES):
        value = environ.get(ENV_PREFIX + name.upper())
        if value is not None:
            out[name] = value
    return out


def _parse_env(
    environ: Mapping[str, str], env_only: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """env_only=False: ``update_config_from_env`` (after a file; a bad value is skipped and
    the file/default value kept). env_only=True: ``from_env`` (no file; a bad value becomes
    None, with a different message)."""
    resolved, warnings = _resolve(_env_values(environ), ENV_SOURCE)
    values: dict[str, Any] = {}
    for name in CONFIG_KEYS:  # LMCache iterates in definition order
        if name not in resolved:
            continue
        raw = resolved[name]
        value = parse_quoted_string(raw)
        try:
            values[name] = CONVERTERS[CONFIG_KEYS[name].kind](value)
        except (ValueError, json.JSONDecodeError) as e:
            if env_only:
                warnings.append(f"Failed to convert value for {name}={value!r}: {e}")
                values[name] = None
            else:
                warnings.append(f"Failed to parse {ENV_PREFIX}{name.upper()}={raw!r}: {e}")
    return values, warnings


def parse_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``LMCACHE_<KEY>`` variables -> {key: typed value}, as LMCache 0.5.6 parses them.

    Only keys present in env are returned; values that fail to convert are left out
    (LMCache logs a warning and keeps the previous value; see :func:`load_config`).
    """
    values, _ = _parse_env(os.environ if environ is None else environ)
    return values


def defaults() -> dict[str, Any]:
    """Every key with its default, converted as LMCache converts defaults."""
    return {name: convert(name, spec.default) for name, spec in CONFIG_KEYS.items()}


def parse_file_values(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """The keys a parsed YAML mapping sets, converted like ``from_file`` does, + warnings."""
    resolved, warnings = _resolve(data, source)
    values: dict[str, Any] = {}
    for name in CONFIG_KEYS:
        if name not in resolved:
            continue
        value = resolved[name]
        try:
            values[name] = convert(name, value)
        except (ValueError, json.JSONDecodeError) as e:
            warnings.append(f"Failed to convert value for {name}={value!r}: {e}")
            values[name] = None
    return values, warnings


def read_config_file(path: str) -> dict[str, Any]:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"LMCache config file {path} is not a YAML mapping")
    return data


def load_config(
    path: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Load the config the way LMCache 0.5.6's vLLM integration does.

    ``path`` None means: ``environ["LMCACHE_CONFIG_FILE"]`` if set, else env only.
    File values first, then env ``LMCACHE_<KEY>`` overrides them (env wins).
    Returns (every key -> value, the warnings LMCache would log, in order).
    Like LMCache, an unset ``lmcache_instance_id`` becomes ``lmcacheengineconfig_<uuid hex>``.
    Semantic validation is separate: :func:`validate_semantics`.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get(CONFIG_FILE_ENV)
    cfg = defaults()
    warnings: list[str] = []
    if path:
        file_vals, w = parse_file_values(read_config_file(path), file_source(path))
        cfg.update(file_vals)
        warnings += w
    env_vals, w = _parse_env(environ, env_only=not path)
    cfg.update(env_vals)
    warnings += w
    if not cfg.get("lmcache_instance_id"):
        cfg["lmcache_instance_id"] = f"lmcacheengineconfig_{uuid.uuid4().hex}"
    return cfg, warnings


# --------------------------------------------------------------------------- semantics
def _full(cfg: Mapping[str, Any]) -> dict[str, Any]:
    full = defaults()
    for k, v in cfg.items():
        if k in CONFIG_KEYS:
            try:
                full[k] = convert(k, v)
            except (ValueError, TypeError, json.JSONDecodeError):
                full[k] = v
    return full


def validate_semantics(cfg: Mapping[str, Any], runtime: bool = True) -> list[str]:
    """Errors for a config LMCache 0.5.6's ``validate()`` rejects (it raises on the first;
    most P2P/PD checks are bare ``assert``s, so LMCache's own message is empty), plus, when
    ``runtime`` is true, the CacheBlend settings the blender needs at run time (LMCache starts
    without them but does not blend, or fails on the first request). ``cfg`` may be partial
    (defaults fill the rest) and unconverted (file-style values are converted first).
    """
    c = _full(cfg)
    errors: list[str] = []
    if c["min_retrieve_tokens"] is not None and c["min_retrieve_tokens"] < 0:
        errors.append(f"min_retrieve_tokens must be >= 0, got {c['min_retrieve_tokens']}")

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errors.append(msg)

    if c["enable_controller"]:
        # lmcache_instance_id: LMCache generates one when unset, so it never fails there.
        need(c["controller_pull_url"] is not None,
             "controller_pull_url is required when enable_controller=True")
        need(c["controller_reply_url"] is not None,
             "controller_reply_url is required when enable_controller=True")
        need(bool(c["lmcache_worker_ports"]),
             "lmcache_worker_ports is required and cannot be empty when enable_controller=True")
    if c["enable_p2p"]:
        need(bool(c["enable_controller"]), "enable_p2p=True requires enable_controller=True")
        if not c["enable_controller"]:
            # LMCache asserts these independently of enable_controller
            need(c["controller_pull_url"] is not None, "enable_p2p=True requires controller_pull_url")
            need(c["controller_reply_url"] is not None, "enable_p2p=True requires controller_reply_url")
            need(c["lmcache_worker_ports"] is not None, "enable_p2p=True requires lmcache_worker_ports")
        for key in ("p2p_host", "p2p_init_ports", "p2p_lookup_ports", "transfer_channel"):
            need(c[key] is not None, f"enable_p2p=True requires {key}")
    if c["enable_pd"]:
        for key in ("pd_role", "pd_buffer_size", "pd_buffer_device"):
            need(c[key] is not None, f"enable_pd=True requires {key}")
        need(c["enable_p2p"] is False, "PD only supports enable_p2p=False")
        if c["pd_backend_mode"] not in ("sync", "async"):
            errors.append(f"pd_backend_mode must be 'sync' or 'async', got {c['pd_backend_mode']!r}")
        if c["pd_role"] == "receiver":
            need(c["store_location"] != "PDBackend", "store_location cannot be PDBackend for receiver")
            need(c["retrieve_locations"] in (None, ["PDBackend"]),
                 'for pd receiver, retrieve_locations are expected to be ["PDBackend"], '
                 f"now, it is {c['retrieve_locations']}")
    extra = c["extra_config"] if isinstance(c["extra_config"], dict) else {}
    if extra.get("enable_nixl_storage"):
        need(extra.get("nixl_backend") is not None, "extra_config.enable_nixl_storage requires extra_config.nixl_backend")
        need(extra.get("nixl_pool_size") is not None, "extra_config.enable_nixl_storage requires extra_config.nixl_pool_size")
        if extra.get("nixl_presence_cache_only") and not extra.get("nixl_presence_cache"):
            errors.append("nixl_presence_cache must be true when nixl_presence_cache_only is true")
        need(c["nixl_buffer_device"] is not None, "extra_config.enable_nixl_storage requires nixl_buffer_device")
        if c["nixl_buffer_device"] == "cpu":
            need(c["nixl_buffer_size"] is None, "nixl_buffer_size must not be set when nixl_buffer_device='cpu'")
            need(c["max_local_cpu_size"] > 0, "nixl_buffer_device='cpu' requires max_local_cpu_size > 0")
            need(not c["enable_p2p"], "enable_p2p=True together with enable_nixl_storage=True + nixl_buffer_device='cpu' is rejected")
        elif c["nixl_buffer_device"] is not None:
            need(c["nixl_buffer_size"] is not None, "extra_config.enable_nixl_storage requires nixl_buffer_size")
    if c["enable_blending"] and runtime:
        # Not checked by validate(), but 0.5.6 only blends on the layerwise retrieve path and
        # the blender indexes blend_check_layers / blend_recompute_ratios unconditionally.
        need(bool(c["use_layerwise"]), "enable_blending=True requires use_layerwise=True (CacheBlend runs only on the layerwise path)")
        need(bool(c["blend_check_layers"]), "enable_blending=True requires blend_check_layers")
        need(bool(c["blend_recompute_ratios"]), "enable_blending=True requires blend_recompute_ratios")
    return errors


def semantic_warnings(cfg: Mapping[str, Any]) -> list[str]:
    """What LMCache 0.5.6 adjusts (and logs) during validate(), plus surprises worth a warning."""
    c = _full(cfg)
    out: list[str] = []
    if c["enable_blending"] and not c["save_unfull_chunk"]:
        out.append("Automatically setting save_unfull_chunk=True because enable_blending=True")
    if c["enable_pd"] and not c["save_unfull_chunk"]:
        out.append(
            "PD (Peer-to-Peer Disaggregation) requires save_unfull_chunk=True for complete KV "
            "cache transfer. Automatically setting save_unfull_chunk=True."
        )
    if c["enable_controller"] and not c["lmcache_instance_id"]:
        out.append("lmcache_instance_id is unset: LMCache generates a random one (lmcacheengineconfig_<uuid>)")
    return out


def apply_validate_adjustments(cfg: dict[str, Any]) -> dict[str, Any]:
    """The values validate() changes in place (save_unfull_chunk for blending and PD)."""
    if cfg.get("enable_blending") or cfg.get("enable_pd"):
        cfg["save_unfull_chunk"] = True
    return cfg


# Where LMCache 0.5.6 logs each of the warnings above: (filename, lineno, logger name), as
# its log format prints them: "[time] LMCache WARNING: <msg> (config_base.py:212:lmcache.v1.config_base)".
_ORIGINS: list[tuple[str, tuple[str, int, str]]] = [
    ("Unknown configuration key: ", ("config_base.py", 212, "lmcache.v1.config_base")),
    ("Failed to convert value for ", ("config_base.py", 43, "lmcache.v1.config_base")),
    ("Failed to parse LMCACHE_", ("config.py", 1045, "lmcache.v1.config")),
    ("Automatically setting save_unfull_chunk=True", ("config.py", 719, "lmcache.v1.config")),
    ("PD (Peer-to-Peer Disaggregation)", ("config.py", 773, "lmcache.v1.config")),
]


def warning_origin(message: str) -> tuple[str, int, str]:
    """(filename, lineno, logger) LMCache 0.5.6 prints after one of the warnings above."""
    for prefix, origin in _ORIGINS:
        if message.startswith(prefix):
            return origin
    return ("config_base.py", 198, "lmcache.v1.config_base")  # deprecation warnings
