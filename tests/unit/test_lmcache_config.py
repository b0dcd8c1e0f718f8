"""kvorch.lmcache_config against behaviour read from (and cross-checked with) LMCache 0.5.6."""

import pytest

from kvorch import lmcache_config as lc

SEED_EXAMPLE1 = """\
chunk_size: 256
local_cpu: True
max_local_cpu_size: 5
enable_async_loading: True
enable_p2p: True
p2p_host: "192.168.110.13"
p2p_init_ports: 8200
p2p_lookup_ports: 8201
transfer_channel: "nixl"
enable_controller: True
lmcache_instance_id: "lmcache_instance_1"
controller_pull_url: "192.168.110.13:8300"
controller_reply_url: "192.168.110.13:8400"
lmcache_worker_ports: 8500
extra_config:
  lookup_backoff_time: 0.001
"""


def test_key_set_shape():
    assert lc.LMCACHE_VERSION == "0.5.6"
    assert len(lc.CONFIG_KEYS) == 108
    for name in ["chunk_size", "enable_p2p", "p2p_init_ports", "controller_pull_url",
                 "lmcache_worker_ports", "enable_pd", "pd_role", "save_unfull_chunk",
                 "blend_special_str", "extra_config", "enable_async_loading", "local_disk"]:
        assert name in lc.CONFIG_KEYS
    spec = lc.CONFIG_KEYS["chunk_size"]
    assert (spec.type, spec.default, spec.kind) == ("int", 256, "int")
    assert spec.env_name == "LMCACHE_CHUNK_SIZE"
    assert lc.CONFIG_KEYS["blend_special_str"].default == " # # "
    assert all(s.description for s in lc.CONFIG_KEYS.values())
    # old names are not keys
    for old in ["controller_url", "nixl_role", "lmcache_worker_port", "enable_xpyd"]:
        assert old not in lc.CONFIG_KEYS
        assert old in lc.RENAMED_KEYS


def test_unknown_keys():
    d = {"chunk_size": 1, "controller_url": "x", "nixl_role": "sender", "lmcache_worker_port": 1,
         "plugin_locations": "/p", "nixl_peer_port": 3, "bogus": 0}
    assert lc.unknown_keys(d) == ["controller_url", "nixl_role", "lmcache_worker_port",
                                  "nixl_peer_port", "bogus"]
    assert lc.key_hint("controller_url") == "controller_pull_url"
    assert lc.key_hint("lmcache_worker_port") == "lmcache_worker_ports"
    assert lc.key_hint("chunk_sise") == "chunk_size"
    assert lc.key_hint("zzzz") is None


@pytest.mark.parametrize("raw,expected", [
    ("True", True), ("true", True), ("1", True), (" TRUE ", True),
    ("False", False), ("yes", False), ("0", False), ("on", False), ("'True'", True),
])
def test_env_bool(raw, expected):
    assert lc.parse_env({"LMCACHE_ENABLE_BLENDING": raw}) == {"enable_blending": expected}


def test_parse_env_types_like_lmcache():
    env = {
        "LMCACHE_CHUNK_SIZE": "128",
        "LMCACHE_MAX_LOCAL_CPU_SIZE": "5",
        "LMCACHE_P2P_INIT_PORTS": "8200, 8202",
        "LMCACHE_BLEND_RECOMPUTE_RATIOS": "0.15",
        "LMCACHE_BLEND_CHECK_LAYERS": "1",
        "LMCACHE_BLEND_SPECIAL_STR": '" # # "',
        "LMCACHE_EXTRA_CONFIG": '{"lookup_backoff_time": 0.001}',
        "LMCACHE_LOCAL_DISK": "file://./local_disk/",
        "LMCACHE_NIXL_BACKENDS": "UCX,GDS",
        "LMCACHE_NOT_A_KEY": "1",  # ignored silently, like LMCache
        "OTHER": "x",
    }
    assert lc.parse_env(env) == {
        "chunk_size": 128,
        "max_local_cpu_size": 5.0,
        "p2p_init_ports": [8200, 8202],
        "blend_recompute_ratios": [0.15],
        "blend_check_layers": [1],
        "blend_special_str": " # # ",
        "extra_config": {"lookup_backoff_time": 0.001},
        "local_disk": "./local_disk/",
        "nixl_backends": ["UCX", "GDS"],
    }


def test_load_seed_file(tmp_path):
    f = tmp_path / "example1.yaml"
    f.write_text(SEED_EXAMPLE1)
    cfg, warnings = lc.load_config(str(f), {})
    assert warnings == []
    assert cfg["p2p_init_ports"] == [8200]  # file values go through the converter too
    assert cfg["lmcache_worker_ports"] == [8500]
    assert cfg["max_local_cpu_size"] == 5.0
    assert cfg["extra_config"] == {"lookup_backoff_time": 0.001}
    assert cfg["lmcache_instance_id"] == "lmcache_instance_1"
    assert cfg["save_unfull_chunk"] is False  # default
    assert lc.validate_semantics(cfg) == []


def test_env_overrides_file_and_warning_texts(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("chunk_size: 256\nnixl_role: sender\ncontroller_url: 'h:1'\nplugin_locations: /p\n")
    env = {"LMCACHE_CHUNK_SIZE": "64", "LMCACHE_LMCACHE_WORKER_PORT": "9",
           "LMCACHE_MAX_LOCAL_CPU_SIZE": "abc"}
    cfg, warnings = lc.load_config(str(f), env)
    assert cfg["chunk_size"] == 64  # env wins
    assert cfg["max_local_cpu_size"] == 5.0  # bad env value: previous value kept
    assert cfg["runtime_plugin_locations"] == ["/p"]  # deprecated key mapped
    src = f"file: {f}"
    assert warnings == [
        f"Unknown configuration key: nixl_role (source: {src})",
        f"Unknown configuration key: controller_url (source: {src})",
        f"plugin_locations is deprecated, use runtime_plugin_locations instead (source: {src})",
        "Unknown configuration key: lmcache_worker_port (source: environment variables)",
        "Failed to parse LMCACHE_MAX_LOCAL_CPU_SIZE='abc': could not convert string to float: 'abc'",
    ]
    assert lc.warning_origin(warnings[0]) == ("config_base.py", 212, "lmcache.v1.config_base")


def test_env_only_path(tmp_path):
    env = {"LMCACHE_MAX_LOCAL_CPU_SIZE": "abc", "LMCACHE_CHUNK_SIZE": "16"}
    cfg, warnings = lc.load_config(None, env)
    assert cfg["chunk_size"] == 16
    assert cfg["max_local_cpu_size"] is None  # from_env: failed conversion -> None
    assert warnings == ["Failed to convert value for max_local_cpu_size='abc': "
                        "could not convert string to float: 'abc'"]
    assert cfg["lmcache_instance_id"].startswith("lmcacheengineconfig_")
    # LMCACHE_CONFIG_FILE in environ is used when path is None
    f = tmp_path / "c.yaml"
    f.write_text("chunk_size: 32\n")
    cfg, _ = lc.load_config(None, {"LMCACHE_CONFIG_FILE": str(f)})
    assert cfg["chunk_size"] == 32


def test_file_not_mapping(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ValueError):
        lc.load_config(str(f), {})


def test_validate_p2p_requirements():
    assert "enable_p2p=True requires enable_controller=True" in lc.validate_semantics({"enable_p2p": True})
    errs = lc.validate_semantics({"enable_p2p": True, "enable_controller": True})
    for k in ["controller_pull_url", "controller_reply_url", "lmcache_worker_ports", "p2p_host",
              "p2p_init_ports", "p2p_lookup_ports", "transfer_channel"]:
        assert any(k in e for e in errs), k
    full = {"enable_p2p": True, "enable_controller": True, "controller_pull_url": "a:1",
            "controller_reply_url": "a:2", "lmcache_worker_ports": 8500, "p2p_host": "a",
            "p2p_init_ports": 8200, "p2p_lookup_ports": 8201, "transfer_channel": "nixl"}
    assert lc.validate_semantics(full) == []
    # controller alone: worker ports must be non-empty
    assert lc.validate_semantics({"enable_controller": True, "controller_pull_url": "a:1",
                                  "controller_reply_url": "a:2", "lmcache_worker_ports": []}) == [
        "lmcache_worker_ports is required and cannot be empty when enable_controller=True"]


def test_validate_pd():
    errs = lc.validate_semantics({"enable_pd": True, "enable_p2p": True})
    assert "PD only supports enable_p2p=False" in errs
    assert any("pd_role" in e for e in errs)
    ok = {"enable_pd": True, "pd_role": "sender", "pd_buffer_size": 1 << 30, "pd_buffer_device": "cuda",
          "transfer_channel": "nixl"}
    assert lc.validate_semantics(ok) == []
    assert any("save_unfull_chunk=True" in w for w in lc.semantic_warnings(ok))
    bad = dict(ok, pd_role="receiver", store_location="PDBackend", pd_backend_mode="x")
    errs = lc.validate_semantics(bad)
    assert "store_location cannot be PDBackend for receiver" in errs
    assert any("pd_backend_mode" in e for e in errs)


def test_validate_blending():
    errs = lc.validate_semantics({"enable_blending": True})
    assert len(errs) == 3
    ok = lc.parse_env({"LMCACHE_ENABLE_BLENDING": "True", "LMCACHE_USE_LAYERWISE": "True",
                       "LMCACHE_BLEND_CHECK_LAYERS": "1", "LMCACHE_BLEND_RECOMPUTE_RATIOS": "0.15"})
    assert lc.validate_semantics(ok) == []
    assert lc.semantic_warnings(ok) == [
        "Automatically setting save_unfull_chunk=True because enable_blending=True"]
    assert lc.apply_validate_adjustments(dict(ok))["save_unfull_chunk"] is True
    assert lc.validate_semantics({"min_retrieve_tokens": -1}) == ["min_retrieve_tokens must be >= 0, got -1"]


def test_env_string_is_stripped_unless_quoted():
    # LMCache strips env values: an unquoted " # # " becomes "# #"; quote it to keep the spaces
    assert lc.parse_env({"LMCACHE_BLEND_SPECIAL_STR": " # # "}) == {"blend_special_str": "# #"}
    assert lc.parse_env({"LMCACHE_BLEND_SPECIAL_STR": "' # # '"}) == {"blend_special_str": " # # "}


def test_runtime_checks_can_be_left_out():
    assert lc.validate_semantics({"enable_blending": True}, runtime=False) == []
