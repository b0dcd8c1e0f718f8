"""Rendering the seed cluster: the LMCache configs and launch scripts the seed describes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from kvorch.errors import RenderError
from kvorch.inventory import load_inventory, parse_inventory
from kvorch.plan import build_plan

ROOT = Path(__file__).resolve().parents[2]

EXAMPLE1 = {
    "chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 5, "enable_async_loading": True,
    "enable_p2p": True, "p2p_host": "192.168.110.13", "p2p_init_ports": 8200, "p2p_lookup_ports": 8201,
    "transfer_channel": "nixl", "enable_controller": True, "lmcache_instance_id": "lmcache_instance_1",
    "controller_pull_url": "192.168.110.13:8300", "controller_reply_url": "192.168.110.13:8400",
    "lmcache_worker_ports": 8500, "extra_config": {"lookup_backoff_time": 0.001},
}
EXAMPLE2 = {**EXAMPLE1, "p2p_host": "192.168.110.97", "p2p_init_ports": 8202, "p2p_lookup_ports": 8203,
            "lmcache_instance_id": "lmcache_instance_2", "lmcache_worker_ports": 8501}


@pytest.fixture(scope="module")
def plan():
    return build_plan(load_inventory(ROOT / "inventory.yaml"))


def file_of(plan, host, path):
    return next(f for f in plan.host(host).files if f.path == path)


def test_example1_equals_the_seed_config(plan):
    assert yaml.safe_load(file_of(plan, "node13", "example1.yaml").content) == EXAMPLE1


def test_example2_equals_the_seed_config_with_its_own_host(plan):
    assert yaml.safe_load(file_of(plan, "node97", "example2.yaml").content) == EXAMPLE2


def script_env_and_argv(text: str) -> tuple[dict[str, str], list[str]]:
    env, argv = {}, []
    for line in text.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            env[k] = shlex.split(v)[0] if v else ""
        elif line.startswith("exec "):
            argv = shlex.split(line[len("exec "):])
    return env, argv


def test_engine_launch_script_carries_the_seed_env_and_args(plan):
    env, argv = script_env_and_argv(file_of(plan, "node13", "run/prefill.sh").content)
    assert {k: env[k] for k in ("PYTHONHASHSEED", "UCX_TLS", "CUDA_VISIBLE_DEVICES", "LMCACHE_CONFIG_FILE")} == {
        "PYTHONHASHSEED": "123", "UCX_TLS": "tcp", "CUDA_VISIBLE_DEVICES": "0", "LMCACHE_CONFIG_FILE": "example1.yaml"}
    assert env["PROMETHEUS_MULTIPROC_DIR"]
    assert argv[:3] == ["vllm", "serve", "meta-llama/Meta-Llama-3.1-8B-Instruct"]
    args = dict(zip(argv[3::2], argv[4::2]))
    assert args == {"--host": "0.0.0.0", "--port": "8010", "--max-model-len": "1600", "--gpu-memory-utilization": "0.9",
                    "--kv-transfer-config": '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'}


def test_decode_engine_listens_on_8011_with_example2(plan):
    env, argv = script_env_and_argv(file_of(plan, "node97", "run/decode.sh").content)
    assert env["LMCACHE_CONFIG_FILE"] == "example2.yaml" and argv[argv.index("--port") + 1] == "8011"


def test_controller_launch_matches_the_seed(plan):
    env, argv = script_env_and_argv(file_of(plan, "node13", "run/controller.sh").content)
    assert env["PYTHONHASHSEED"] == "123"
    assert argv == ["lmcache_controller", "--host", "0.0.0.0", "--port", "9000", "--monitor-ports", '{"pull":8300,"reply":8400}']


def test_each_engine_gets_its_own_metrics_dir_wiped_before_start(plan):
    dirs = {p.name: p.env["PROMETHEUS_MULTIPROC_DIR"] for p in plan.engines()}
    assert len(set(dirs.values())) == 2
    script = file_of(plan, "node13", "run/prefill.sh").content
    assert f"rm -rf -- {dirs['prefill']} && mkdir -p -- {dirs['prefill']}" in script


def test_plan_orders_controller_before_engines(plan):
    assert [[p.name for p in s] for s in plan.stages()] == [["controller"], ["decode", "prefill"]]


def test_plan_json_lists_processes_with_health_urls(plan):
    data = json.loads(json.dumps(plan.public()))
    procs = {p["name"]: p for h in data["hosts"] for p in h["processes"]}
    assert procs["prefill"]["health_url"] == "http://192.168.110.13:8010/health"
    assert procs["decode"]["api_url"] == "http://192.168.110.97:8011/v1"
    assert procs["controller"]["ports"] == [9000, 8300, 8400]
    assert procs["prefill"]["ports"] == [8010, 8200, 8201, 8500]
    assert all(len(f["sha256"]) == 64 for h in data["hosts"] for f in h["files"])


def test_secrets_go_to_a_private_file_and_never_into_scripts_or_json():
    text = (ROOT / "inventory.yaml").read_text().replace("  UCX_TLS: tcp\n", "  UCX_TLS: tcp\n  HF_TOKEN: hf_supersecret\n")
    plan = build_plan(parse_inventory(text))
    secret_files = [f for h in plan.hosts for f in h.files if f.secret]
    assert secret_files and all(f.mode == 0o600 and "hf_supersecret" in f.content for f in secret_files)
    assert all("hf_supersecret" not in f.content for h in plan.hosts for f in h.files if not f.secret)
    assert "hf_supersecret" not in json.dumps(plan.public())
    controller_files = [f.path for f in plan.host("node13").files if f.secret]
    assert "run/controller.secrets.env" not in controller_files  # the controller never gets secrets


def test_shell_metacharacters_in_values_are_quoted():
    text = (ROOT / "inventory.yaml").read_text().replace("  UCX_TLS: tcp\n", "  UCX_TLS: tcp\n  NOTE: \"$(touch /tmp/pwned); `id` 'x'\"\n")
    plan = build_plan(parse_inventory(text))
    env, _ = script_env_and_argv(file_of(plan, "node13", "run/prefill.sh").content)
    assert env["NOTE"] == "$(touch /tmp/pwned); `id` 'x'"


def test_template_producing_an_unknown_key_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "lmcache-config.yaml.j2").write_text("chunk_size: 256\nnixl_role: sender\n")
    (tmp_path / "launch.sh.j2").write_text((ROOT / "templates" / "launch.sh.j2").read_text())
    monkeypatch.setenv("ORCHESTRATE_TEMPLATES", str(tmp_path))
    with pytest.raises(RenderError) as info:
        build_plan(load_inventory(ROOT / "inventory.yaml"))
    assert "nixl_role" in info.value.message


@pytest.mark.parametrize("inventory", ["inventories/seed-pd.yaml", "inventories/seed-blend.yaml",
                                       "inventories/local-cpu.yaml", "inventories/loopback-cpu.yaml"])
def test_every_shipped_topology_renders_and_passes_the_lmcache_checks(inventory):
    plan = build_plan(load_inventory(ROOT / inventory))
    assert plan.processes()


def test_pd_configs_follow_lmcache_disagg_example():
    plan = build_plan(load_inventory(ROOT / "inventories/seed-pd.yaml"))
    pre = yaml.safe_load(file_of(plan, "node13", "lmcache-prefiller-config.yaml").content)
    dec = yaml.safe_load(file_of(plan, "node97", "lmcache-decoder-config.yaml").content)
    assert (pre["enable_pd"], pre["pd_role"], pre["pd_proxy_host"], pre["pd_proxy_port"]) == (True, "sender", "192.168.110.13", 7500)
    assert (dec["pd_role"], dec["pd_peer_host"], dec["pd_peer_init_port"], dec["pd_peer_alloc_port"]) == ("receiver", "192.168.110.97", [7300], [7400])
    assert "enable_p2p" not in pre and "enable_p2p" not in dec
    _, pre_argv = script_env_and_argv(file_of(plan, "node13", "run/prefill.sh").content)
    _, dec_argv = script_env_and_argv(file_of(plan, "node97", "run/decode.sh").content)
    assert json.loads(pre_argv[pre_argv.index("--kv-transfer-config") + 1])["kv_role"] == "kv_producer"
    assert json.loads(dec_argv[dec_argv.index("--kv-transfer-config") + 1])["kv_connector_extra_config"]["skip_last_n_tokens"] == 1
    proxy = plan.process("proxy")
    assert proxy.health_url == "tcp://192.168.110.13:9100" and proxy.stage == 2
    args = dict(zip(proxy.argv[2::2], proxy.argv[3::2]))
    assert args["--decoder-init-port"] == "7300" and args["--proxy-port"] == "7500"


def test_mp_engines_point_at_the_lmcache_server():
    plan = build_plan(load_inventory(ROOT / "inventories/loopback-cpu.yaml"))
    decode = plan.process("decode")
    cfg = json.loads(decode.argv[decode.argv.index("--kv-transfer-config") + 1])
    assert cfg["kv_connector"] == "LMCacheMPConnector"
    assert cfg["kv_connector_extra_config"] == {"lmcache.mp.host": "tcp://127.0.0.13", "lmcache.mp.port": 5555}
    assert "--gpu-memory-utilization" not in decode.argv and "--enforce-eager" in decode.argv
    assert plan.process("lmcache-server").health_url == "http://127.0.0.13:8090/healthcheck"
    assert plan.host("node97").prepare[0][1:4] == ["-m", "kvorch.tinymodel", "/tmp/kvorch-models/tiny-llama-4x256"]


def test_pd_decoder_without_its_ports_is_rejected():
    from kvorch.errors import InventoryError

    text = (ROOT / "inventories/seed-pd.yaml").read_text().replace("pd_peer_init_port: 7300, ", "")
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "pd.yaml")
    assert "engines[1].pd_peer_init_port: PD decoder 'decode' needs pd_peer_init_port" in info.value.message


def test_tilde_paths_are_home_relative_in_launch_scripts():
    plan = build_plan(load_inventory(ROOT / "inventories/seed-pd.yaml"))
    assert 'exec python3 "$HOME"/LMCache/examples/disagg_prefill/disagg_proxy_server.py' in file_of(plan, "node13", "run/proxy.sh").content
