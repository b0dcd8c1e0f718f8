"""The kept plan: reused only for the very same inputs (inventory bytes, this package's code, the
files the plan read), stored only where the run state lives and read only when nobody else could
have written it; a `status` that reuses it imports neither Jinja2 nor PyYAML."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from clusterkit import ROOT, Orch, free_ports, give_free_ports, listening, write_inventory
from kvorch import plan_cache


@pytest.fixture
def inv(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATE_STATE", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    p = tmp_path / "inv.yaml"
    p.write_text("cluster: a\n")
    return str(p)


class Builds:
    """A build that counts its calls and returns a fresh (inventory, plan) each time."""

    def __init__(self, proxy_source: str | None = None, secret: bool = False):
        self.n = 0
        self.proxy_source = proxy_source
        self.secret = secret

    def __call__(self):
        self.n += 1
        inventory = SimpleNamespace(proxy=SimpleNamespace(source=self.proxy_source) if self.proxy_source else None)
        files = [SimpleNamespace(path="run/a.sh", secret=False)]
        if self.secret:
            files.append(SimpleNamespace(path="run/a.secrets.env", secret=True))
        host = SimpleNamespace(files=files, processes=[])
        return inventory, SimpleNamespace(cluster="a", built=self.n, hosts=[host], processes=list)


def test_the_same_inventory_bytes_reuse_the_kept_plan(inv):
    build = Builds()
    plan_cache.load_or_build(inv, build)
    _, plan = plan_cache.load_or_build(inv, build)
    assert build.n == 1 and plan.built == 1 and plan_cache.last_outcome == "hit"


def test_a_plan_carrying_a_secret_is_never_kept(inv, tmp_path):
    # secrets live only in the host's 0600 secrets file, never in the local run state
    plain = Builds()
    plan_cache.load_or_build(inv, plain)
    assert list((tmp_path / "state" / "plans").iterdir())
    Path(inv).write_text("cluster: s\n")  # a token added to the inventory
    build = Builds(secret=True)
    plan_cache.load_or_build(inv, build)
    plan_cache.load_or_build(inv, build)
    assert build.n == 2 and plan_cache.last_outcome == "miss"
    assert list((tmp_path / "state" / "plans").iterdir()) == []  # the entry kept before is gone too


def test_one_changed_byte_of_the_inventory_builds_again(inv):
    build = Builds()
    plan_cache.load_or_build(inv, build)
    Path(inv).write_text("cluster: b\n")  # same length, one byte differs
    _, plan = plan_cache.load_or_build(inv, build)
    assert build.n == 2 and plan.built == 2 and plan_cache.last_outcome == "miss"
    plan_cache.load_or_build(inv, build)
    assert build.n == 2  # and that one is kept in turn


def test_a_changed_source_file_of_the_package_builds_again(inv, tmp_path, monkeypatch):
    code = tmp_path / "module.py"
    code.write_text("X = 1\n")
    real = plan_cache._source_files
    monkeypatch.setattr(plan_cache, "_source_files", lambda: real() + [code])
    build = Builds()
    plan_cache.load_or_build(inv, build)
    code.write_text("X = 2\n")
    plan_cache.load_or_build(inv, build)
    assert build.n == 2


def test_a_changed_template_of_orchestrate_templates_builds_again(inv, tmp_path, monkeypatch):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "launch.sh.j2").write_text("v1\n")
    monkeypatch.setenv("ORCHESTRATE_TEMPLATES", str(templates))
    build = Builds()
    plan_cache.load_or_build(inv, build)
    plan_cache.load_or_build(inv, build)
    (templates / "launch.sh.j2").write_text("v2\n")
    plan_cache.load_or_build(inv, build)
    assert build.n == 2


def test_a_changed_file_the_plan_read_builds_again(inv, tmp_path):
    src = tmp_path / "proxy.py"
    src.write_text("print('v1')\n")
    build = Builds(proxy_source=str(src))
    plan_cache.load_or_build(inv, build)
    plan_cache.load_or_build(inv, build)
    assert build.n == 1
    src.write_text("print('v2')\n")
    plan_cache.load_or_build(inv, build)
    assert build.n == 2


def test_an_entry_others_could_write_is_not_read(inv):
    build = Builds()
    plan_cache.load_or_build(inv, build)
    entry = plan_cache._where(inv)
    assert oct(entry.stat().st_mode & 0o777) == "0o600" and oct(entry.parent.stat().st_mode & 0o777) == "0o700"
    os.chmod(entry, 0o620)
    plan_cache.load_or_build(inv, build)
    assert build.n == 2


def test_a_damaged_entry_is_a_miss(inv):
    build = Builds()
    plan_cache.load_or_build(inv, build)
    plan_cache._where(inv).write_bytes(b"not a pickle")
    _, plan = plan_cache.load_or_build(inv, build)
    assert build.n == 2 and plan.built == 2


def test_nothing_is_kept_where_no_run_state_exists(inv, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATE_STATE", str(tmp_path / "never-up"))
    build = Builds()
    plan_cache.load_or_build(inv, build)
    plan_cache.load_or_build(inv, build)
    assert build.n == 2 and not (tmp_path / "never-up").exists()


def test_up_keeps_its_plan_from_the_first_run_in_a_new_state_folder(inv, tmp_path, monkeypatch):
    # up makes the run state's folder anyway (its lock): the very first up there keeps what it built
    monkeypatch.setenv("ORCHESTRATE_STATE", str(tmp_path / "fresh" / "state"))
    build = Builds()
    plan_cache.load_or_build(inv, build, make_state_root=True)
    plan_cache.load_or_build(inv, build)
    assert build.n == 1 and plan_cache.last_outcome == "hit"


def _imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def _local_cluster(tmp_path: Path, prefix: str, mutate=None) -> tuple[Orch, str]:
    """The embedded local inventory on free ports, its own cluster name, a run-state folder
    (``mutate``: changes the test makes to it)."""
    name = f"{prefix}{tmp_path.name[-12:]}".replace("_", "").replace("-", "")[:30]

    def m(d):
        d["cluster"] = name
        give_free_ports(d)
        for h in d["hosts"].values():
            h["workdir"] = str(tmp_path / "hosts")
        if mutate:
            mutate(d)
    orch = Orch(tmp_path, write_inventory(tmp_path / "inv.yaml", "inventories/local.yaml", m))
    (tmp_path / "state").mkdir()
    return orch, name


def test_status_with_a_kept_plan_imports_neither_jinja2_nor_yaml_and_prints_the_same(tmp_path):
    orch, name = _local_cluster(tmp_path, "pc")

    def status() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "orchestrate.py"), "status"],
                              cwd=tmp_path, env=orch.env(), capture_output=True, text=True, timeout=60)
    first, second = status(), status()
    assert first.returncode == second.returncode == 1  # nothing runs: every process absent
    assert "absent" in second.stdout and second.stdout == first.stdout
    assert {"jinja2", "yaml"} <= {m.split(".")[0] for m in _imported(first.stderr)}  # built: rendered
    assert not {m for m in _imported(second.stderr) if m.split(".")[0] in ("jinja2", "yaml")}
    # the kept plan is plain data and the kept inventory stays pickled: no validation library at all
    assert "pydantic" in {m.split(".")[0] for m in _imported(first.stderr)}
    assert not {m for m in _imported(second.stderr) if m.split(".")[0] in ("pydantic", "pydantic_core")}
    # edited: built again, and the edit shows
    text = orch.inventory.read_text()
    orch.inventory.write_text(text.replace(f"cluster: {name}", f"cluster: {name}x"))
    third = status()
    assert f"cluster {name}x" in third.stdout and "jinja2" in {m.split(".")[0] for m in _imported(third.stderr)}


def test_the_kept_inventory_is_unpickled_only_when_asked_for(inv):
    build = Builds()
    plan_cache.load_or_build(inv, build)
    kept, plan = plan_cache.load_or_build(inv, build)
    assert plan_cache.last_outcome == "hit" and isinstance(kept, plan_cache.KeptInventory)
    assert kept.load() == build()[0]


def test_preflight_with_a_kept_plan_imports_no_pydantic_and_gives_the_same_verdicts(tmp_path):
    # what preflight's checks read of the inventory (the targeted lmcache version, each real engine's
    # LMCache settings for the GPU-host probe) is carried in the plan: a kept plan needs no inventory.
    # One engine is a real vLLM here (never started): its packages, model and GPU-host lines run too.
    def real_decode(d):
        d["model"] = "/nonexistent/kvorch-model"
        d["engines"][1]["kind"] = "vllm"
    orch, _ = _local_cluster(tmp_path, "pf", real_decode)

    def preflight() -> tuple[subprocess.CompletedProcess, list[tuple[str, str, str]]]:
        r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "orchestrate.py"), "--json", "preflight"],
                           cwd=tmp_path, env=orch.env(), capture_output=True, text=True, timeout=120)
        return r, [(c["host"], c["name"], c["status"]) for c in json.loads(r.stdout)["checks"]]
    (first, fresh), (second, kept) = preflight(), preflight()
    assert list((tmp_path / "state" / "plans").iterdir())  # kept by the first
    assert first.returncode == second.returncode == 1 and kept == fresh
    assert {("local", "model", "fail"), ("local", "lmcache", "ok"), ("local", "nixl", "fail"),
            ("*", "PYTHONHASHSEED", "ok")} <= set(kept), kept
    assert "pydantic" in {m.split(".")[0] for m in _imported(first.stderr)}  # built: validated
    assert not {m for m in _imported(second.stderr) if m.split(".")[0] in ("pydantic", "pydantic_core", "jinja2", "yaml")}


def test_a_secret_only_the_inventory_holds_is_never_kept(tmp_path, monkeypatch):
    # a token in the env of a host that runs only the controller: no process gets it (the plan holds
    # no secret), but the kept inventory would
    from kvorch.inventory import load_inventory
    from kvorch.plan import build_plan

    monkeypatch.setenv("ORCHESTRATE_STATE", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    token = "hf_ONLYinTHEinventory_91b2"

    def m(d, secret: bool):
        give_free_ports(d)
        d["hosts"]["ctl"] = {"address": "127.0.0.2", "connector": "local", "workdir": str(tmp_path / "ctl"),
                             "env": {"CTL_TOKEN": token} if secret else {}}
        d["controller"]["host"] = "ctl"
    path = write_inventory(tmp_path / "inv.yaml", "inventories/local.yaml", lambda d: m(d, False))
    inv = load_inventory(path)
    plan_cache.store(str(path), inv, build_plan(inv))
    assert list((tmp_path / "state" / "plans").iterdir())  # kept while no secret is in it
    write_inventory(path, "inventories/local.yaml", lambda d: m(d, True))
    inv = load_inventory(path)
    plan = build_plan(inv)
    assert not plan_cache._holds_secrets(plan)  # (the plan alone would have been kept)
    plan_cache.store(str(path), inv, plan)
    assert list((tmp_path / "state" / "plans").iterdir()) == []  # the older entry removed too
    assert not any(token.encode() in f.read_bytes() for f in (tmp_path / "state").rglob("*") if f.is_file())


def test_up_reuses_the_kept_plan_and_after_an_edit_starts_the_new_configuration(tmp_path):
    orch, _ = _local_cluster(tmp_path, "uc")

    def up(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "orchestrate.py"), "up", *args],
                              cwd=tmp_path, env=orch.env(), capture_output=True, text=True, timeout=120)
    try:
        first = up("--skip-preflight")
        assert first.returncode == 0, first.stderr[-2000:]
        assert "jinja2" in {m.split(".")[0] for m in _imported(first.stderr)}  # built (and kept)
        assert list((tmp_path / "state" / "plans").iterdir())
        assert orch("down", "--no-collect").code == 0
        # the same inputs: nothing parsed, validated or rendered, and the same processes come up
        second = up("--skip-preflight")
        assert second.returncode == 0, second.stderr[-2000:]
        assert not {m for m in _imported(second.stderr) if m.split(".")[0] in ("jinja2", "yaml", "pydantic")}
        def urls(r: subprocess.CompletedProcess) -> list[str]:
            return re.findall(r"http://\S+", r.stdout)
        assert urls(second) == urls(first) and len(urls(first)) == 3
        assert orch("down", "--no-collect").code == 0
        # the decode engine moved to another port: this up starts it there, not where the kept plan had it
        data = yaml.safe_load(orch.inventory.read_text())
        decode = next(e for e in data["engines"] if e["name"] == "decode")
        old, new = decode["port"], free_ports(1)[0]
        decode["port"] = new
        orch.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        third = up()  # with preflight: the inventory it checks is the edited one too
        assert third.returncode == 0, third.stderr[-2000:]
        assert f"127.0.0.1:{new}/health" in third.stdout and f":{old}/" not in third.stdout
        assert listening("127.0.0.1", new) and not listening("127.0.0.1", old)
    finally:
        orch("down", "--no-collect")
