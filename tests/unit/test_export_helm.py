"""`orchestrate export helm`: the exported values pass the chart's schema, render with Helm's own
engine (helm-python-sdk), and the rendered Deployments carry the same LMCache and vLLM settings as
the SSH launch scripts, key by key."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from kvorch import lmcache_config
from kvorch.export.helm import env_value, export_helm, write_helm
from kvorch.inventory import load_inventory, parse_inventory
from kvorch.plan import build_plan

helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk==0.2.2 (the [test] extra)")

ROOT = Path(__file__).resolve().parents[2]
CHART = Path("/work/shared/anchors/production-stack-helm")
if not CHART.is_dir():
    CHART = ROOT.parent / "shared" / "anchors" / "production-stack-helm"
RELEASE = "kvt"


def render(values: dict) -> dict[str, list[dict]]:
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values, name=RELEASE, namespace="default")
    finally:
        chart.close()
    docs: dict[str, list[dict]] = {}
    for path, text in out.items():
        for d in yaml.safe_load_all(text):
            if d:
                docs.setdefault(d["kind"], []).append(d)
    return docs


def launch_of(plan, name: str) -> tuple[dict[str, str], list[str], dict | None]:
    """(env, argv, LMCache config file) as the rendered launch script sets them."""
    p = plan.process(name)
    files = {f.path: f.content for f in plan.host(p.host).files}
    env: dict[str, str] = {}
    argv: list[str] = []
    for line in files[p.launch_script].splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            env[k] = shlex.split(v)[0] if v else ""
        elif line.startswith("exec "):
            argv = shlex.split(line[len("exec "):])
    cfg = yaml.safe_load(files[env["LMCACHE_CONFIG_FILE"]]) if "LMCACHE_CONFIG_FILE" in env else None
    return env, argv, cfg


def lmcache_settings_of_launch(env: dict[str, str], cfg: dict | None) -> dict:
    file_values = lmcache_config.parse_file_values(cfg, "file")[0] if cfg else {}
    return {**file_values, **lmcache_config.parse_env(env)}


def vllm_flags(argv: list[str]) -> dict[str, str | None]:
    """--flag → value (None for switches), after the model, --host and --port; _ and - alike."""
    out: dict[str, str | None] = {}
    i = argv.index("--port") + 2
    while i < len(argv):
        flag = argv[i].replace("_", "-")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[flag] = argv[i + 1]
            i += 2
        else:
            out[flag] = None
            i += 1
    if "--kv-transfer-config" in out:
        out["--kv-transfer-config"] = json.loads(out["--kv-transfer-config"])
    return out


def container_of(docs, engine: str) -> dict:
    dep = next(d for d in docs["Deployment"] if d["metadata"]["name"] == f"{RELEASE}-{engine}-deployment-vllm")
    return dep["spec"]["template"]["spec"]["containers"][0]


def assert_same_settings(inv, plan, docs):
    for p in plan.engines():
        env, argv, cfg = launch_of(plan, p.name)
        c = container_of(docs, p.name)
        pod_env = {e["name"]: e.get("value") for e in c["env"]}
        want = lmcache_settings_of_launch(env, cfg)
        got = lmcache_config.parse_env({k: v for k, v in pod_env.items() if v is not None})
        for key, value in want.items():
            if key == "p2p_host":
                assert pod_env["LMCACHE_P2P_HOST"] == "$(POD_IP)"
            elif key in ("controller_pull_url", "controller_reply_url"):
                assert got[key] == f"{RELEASE}-router-service:{str(value).rsplit(':', 1)[1]}", key
            else:
                assert got.get(key) == value, (p.name, key, got.get(key), value)
        assert set(got) == set(want), (p.name, set(got) ^ set(want))
        for k, v in env.items():  # every other variable of the launch script, same value
            if not k.startswith("LMCACHE_") and k not in ("PROMETHEUS_MULTIPROC_DIR",):
                assert pod_env.get(k) == v, (p.name, k)
        launch_flags, pod_flags = vllm_flags(argv), vllm_flags(c["command"])
        if "--enable-prefix-caching" not in launch_flags and "--no-enable-prefix-caching" not in launch_flags:
            launch_flags["--enable-prefix-caching"] = None  # vLLM's default; the chart always passes one
        assert pod_flags == launch_flags, p.name


def validate_schema(values: dict) -> None:
    jsonschema.validate(values, json.loads((CHART / "values.schema.json").read_text()))


def test_seed_p2p_export_renders_with_the_same_settings_as_the_launch_scripts():
    inv = load_inventory(ROOT / "inventory.yaml")
    plan = build_plan(inv)
    exp = export_helm(inv, plan)
    validate_schema(exp.values)
    docs = render(exp.values)
    assert_same_settings(inv, plan, docs)
    router = next(d for d in docs["Deployment"] if d["metadata"]["name"].endswith("-deployment-router"))
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--routing-logic") + 1] == "kvaware"
    assert args[args.index("--lmcache-controller-port") + 1] == "8300"
    assert args[args.index("--lmcache-controller-reply-port") + 1] == "8400"
    svc = next(d for d in docs["Service"] if d["metadata"]["name"] == f"{RELEASE}-router-service")
    assert {8300, 8400} <= {p["port"] for p in svc["spec"]["ports"]}


def test_seed_pd_export_renders_with_the_same_settings_as_the_launch_scripts():
    inv = load_inventory(ROOT / "inventories/seed-pd.yaml")
    plan = build_plan(inv)
    exp = export_helm(inv, plan)
    validate_schema(exp.values)
    docs = render(exp.values)
    assert_same_settings(inv, plan, docs)
    router = next(d for d in docs["Deployment"] if d["metadata"]["name"].endswith("-deployment-router"))
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--routing-logic") + 1] == "disaggregated_prefill"
    assert any(n.setting == "proxy" for n in exp.notes)


def test_blend_export_keeps_the_blend_keys_and_enforce_eager():
    inv = load_inventory(ROOT / "inventories/seed-blend.yaml")
    plan = build_plan(inv)
    docs = render(export_helm(inv, plan).values)
    assert_same_settings(inv, plan, docs)
    pod_env = {e["name"]: e.get("value") for e in container_of(docs, "blend")["env"]}
    assert lmcache_config.parse_env(pod_env)["blend_special_str"] == " # # "  # spaces kept through the env
    assert "--enforce-eager" in container_of(docs, "blend")["command"]


def test_a_setting_that_differs_from_the_launch_script_is_caught():
    inv = load_inventory(ROOT / "inventory.yaml")
    plan = build_plan(inv)
    values = export_helm(inv, plan).values
    values["servingEngineSpec"]["modelSpec"][0]["env"][0]["value"] = "512"  # LMCACHE_CHUNK_SIZE of one engine
    with pytest.raises(AssertionError):
        assert_same_settings(inv, plan, render(values))


def test_a_value_the_schema_rejects_is_caught():
    inv = load_inventory(ROOT / "inventory.yaml")
    values = export_helm(inv).values
    values["routerSpec"]["routingLogic"] = "nearest"
    with pytest.raises(jsonschema.ValidationError):
        validate_schema(values)


def test_notes_cover_every_setting_without_a_kubernetes_counterpart(tmp_path):
    inv = load_inventory(ROOT / "inventory.yaml")
    exp = export_helm(inv)
    settings = {n.setting for n in exp.notes}
    assert {"controller.port", "engines[prefill].p2p_host", "engines[decode].controller_pull_url", "hosts"} <= settings
    values, readme = write_helm(exp, tmp_path)
    assert yaml.safe_load(values.read_text()) == exp.values
    assert "| `controller.port` | `9000` |" in readme.read_text()


def test_secrets_are_not_exported_but_noted():
    data = yaml.safe_load((ROOT / "inventory.yaml").read_text())
    data["env"]["HF_TOKEN"] = "hf_secret_value"
    exp = export_helm(parse_inventory(yaml.safe_dump(data), "inv.yaml"))
    assert "hf_secret_value" not in json.dumps(exp.values) + json.dumps([n.model_dump() for n in exp.notes])
    assert any(n.setting == "env.HF_TOKEN" for n in exp.notes)


@pytest.mark.parametrize("value", [True, 256, 0.15, [1], [0.15, 0.2], " # # ", {"a": 1}, "nixl"])
def test_env_values_parse_back_as_lmcache_reads_them(value):
    key = {bool: "local_cpu", int: "chunk_size", float: "max_local_cpu_size", str: "blend_special_str",
           dict: "extra_config"}.get(type(value)) or ("blend_check_layers" if isinstance(value[0], int) else "blend_recompute_ratios")
    parsed = lmcache_config.parse_env({"LMCACHE_" + key.upper(): env_value(value)})[key]
    assert parsed == (value if not isinstance(value, str) or key == "blend_special_str" else value)
