"""The bundle `up` ships to hosts (kvorch/bundle.py): content-addressed, complete, reused."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from kvorch import bundle
from kvorch.hosts import HostOps, LocalTransport
from kvorch.nodes import Node
from kvorch.plan import HostPlan

#: what the host programs import, run on an interpreter that sees no site-packages at all (-S)
IMPORTS = ("import kvorch.sim.engine, kvorch.sim.controller, kvorch.tinymodel, yaml, prometheus_client; "
           "print(prometheus_client.__file__); print(yaml.__file__); "
           "print(yaml.safe_load(open('cfg.yaml'))['chunk_size'])")


@pytest.fixture
def node(tmp_path):
    wd = tmp_path / "host"
    hp = HostPlan(name="h", address="127.0.0.1", connector="local", workdir=str(wd), python=sys.executable,
                  bundle=bundle.local_bundle().sha256, files=[], processes=[])
    t = LocalTransport(name="h")
    yield Node(plan=hp, ops=HostOps(t, workdir=str(wd)), workdir=str(wd))
    t.close()


def run_bare(node: Node, b: bundle.Bundle) -> subprocess.CompletedProcess:
    """Import the host programs with the bundle on PYTHONPATH and no site-packages (-S)."""
    wd = Path(node.workdir)
    (wd / "cfg.yaml").write_text("chunk_size: 256\n")
    path = ":".join(str(wd / d) for d in b.python_path)
    return subprocess.run([sys.executable, "-S", "-c", IMPORTS], cwd=wd, capture_output=True, text=True,
                          env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}, timeout=60)


def test_bundle_hash_is_stable_and_changes_with_any_byte():
    b = bundle.local_bundle()
    files = list(b.files)
    assert bundle.content_hash(files) == b.sha256
    name, data = files[0]
    assert bundle.content_hash([(name, data + b" ")] + files[1:]) != b.sha256
    assert b.zip_bytes() == b.zip_bytes()  # deterministic: fixed timestamps, sorted entries
    names = {n for n, _ in files}
    assert {"kvorch/sim/engine.py", "kvorch/sim/controller.py", "kvorch/tinymodel.py",
            "deps/prometheus_client/__init__.py", "deps/yaml/__init__.py"} <= names
    assert not any(n.endswith((".so", ".pyc")) for n in names)  # pure Python: any CPython >= 3.10
    assert not any(n.startswith("kvorch/cli/") for n in names)  # only what runs on hosts: editing the CLI changes nothing there


def test_ensure_ships_once_then_finds_it_there(node):
    first = bundle.ensure(node)
    assert first.uploaded and first.bytes_sent > 10_000
    d = Path(node.workdir) / bundle.local_bundle().dir
    assert (d / bundle.MARKER).is_file() and (d / "kvorch" / "sim" / "engine.py").is_file()
    assert not list(d.parent.glob(".*.zip")) and not list(d.parent.glob(".unpack-*"))  # nothing left behind

    again = bundle.ensure(node)
    assert not again.uploaded and again.bytes_sent == 0

    (d / bundle.MARKER).unlink()  # incomplete (e.g. someone deleted part of it): shipped again
    import shutil

    shutil.rmtree(d)
    assert bundle.ensure(node).uploaded


def test_the_unpacked_bundle_runs_the_host_programs_with_no_site_packages(node):
    b = bundle.local_bundle()
    bundle.ensure(node, b)
    r = run_bare(node, b)
    assert r.returncode == 0, r.stderr
    prom, yml, chunk = r.stdout.split()
    assert prom.startswith(str(Path(node.workdir) / b.dir / "deps")) and yml.startswith(str(Path(node.workdir) / b.dir))
    assert chunk == "256"


def test_a_bundle_without_its_deps_cannot_run_the_sim(node):
    """The check above fails on a planted cause: the same bundle minus prometheus_client."""
    full = bundle.local_bundle()
    files = tuple(f for f in full.files if not f[0].startswith("deps/prometheus_client/"))
    short = dataclasses.replace(full, files=files, sha256=bundle.content_hash(list(files)))
    bundle.ensure(node, short)
    r = run_bare(node, short)
    assert r.returncode != 0 and "No module named 'prometheus_client'" in r.stderr


def test_the_host_refuses_a_bundle_whose_content_does_not_match_its_name(node):
    full = bundle.local_bundle()
    forged = dataclasses.replace(full, files=full.files[1:])  # content changed, name kept
    with pytest.raises(Exception) as e:
        bundle.ensure(node, forged)
    assert "content hash" in str(e.value)
    assert not (Path(node.workdir) / full.dir).exists()


@pytest.mark.parametrize("version,bad", [("3.8.18", True), ("3.9.0", True), ("3.10.0", False), ("3.13.1", False)])
def test_interpreter_versions_below_3_10_are_refused(version, bad):
    assert (bundle.version_problem(version) is not None) == bad


# ---- the plan: who gets the bundle, and how ----------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _plan(inventory: str):
    from kvorch.inventory import load_inventory
    from kvorch.plan import build_plan

    return build_plan(load_inventory(ROOT / inventory))


def test_sim_launch_scripts_put_the_bundle_first_on_pythonpath():
    plan = _plan("inventories/loopback.yaml")
    b = bundle.local_bundle()
    for h in plan.hosts:
        assert h.bundle == b.sha256
        for p in h.processes:
            script = next(f.content for f in h.files if f.path == p.launch_script)
            assert (f'export PYTHONPATH="$PWD"/{b.dir}:"$PWD"/{b.dir}/deps${{PYTHONPATH:+:$PYTHONPATH}}'
                    in script.splitlines())


def test_real_engines_get_no_bundle_but_the_tiny_model_step_does():
    plan = _plan("inventories/loopback-cpu.yaml")  # LMCache server + two vLLM engines + tiny_model
    for h in plan.hosts:
        assert all(not p.python_path for p in h.processes)
        assert all("PYTHONPATH" not in f.content for f in h.files if f.path.endswith(".sh"))
        assert (h.bundle is not None) == bool(h.prepare)
    assert any(h.prepare for h in plan.hosts)


def test_the_tiny_model_step_sees_kvorch_from_the_bundle_and_not_its_deps(node):
    bundle.ensure(node)
    env = bundle.prepare_env(node)
    assert env == {"PYTHONPATH": str(Path(node.workdir) / bundle.local_bundle().dir)}
    r = subprocess.run([sys.executable, "-S", "-c", "import kvorch.tinymodel, importlib.util as u; "
                        "print(kvorch.tinymodel.__file__); print(u.find_spec('yaml'))"],
                       env={**env, "PATH": "/usr/bin:/bin"}, cwd=node.workdir, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    where, yaml_spec = r.stdout.split()
    assert where.startswith(env["PYTHONPATH"]) and yaml_spec == "None"  # the host's PyYAML, not ours
