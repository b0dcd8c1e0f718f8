"""`up` over SSH in one round trip per host (bundle check, files, the first stage's starts): what the
fast path must still do — a host without this bundle gets it, a file changed on a host is written
again, and a host that fails while another has already started its controller leaves nothing
running anywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clusterkit import loopback_orch

pytestmark = pytest.mark.ssh


def _ours_alive(cluster: str) -> list[int]:
    """Pids on this machine (the loopback hosts are this machine) carrying a marker of ``cluster``."""
    needle = f"ORCHESTRATE_PROCESS={cluster}/".encode()
    out = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in env.read_bytes():
                out.append(int(env.parent.name))
        except OSError:
            continue
    return out


def _wd(tmp: Path, address: str) -> Path:
    return tmp / "hosts" / address


def test_a_host_without_this_bundle_gets_it_and_a_host_with_it_gets_nothing(sshd_cluster, tmp_path):
    orch = loopback_orch(tmp_path, sshd_cluster, "pipebundle")
    try:
        first = orch("--json", "up")
        assert first.code == 0, first.err + first.out
        sha = first.json()["bundle"]["node97"]["sha256"]
        down = orch("down", "--no-collect")
        assert down.code == 0, down.err + down.out
        # node97 now holds another bundle only (as after an older version of this tool)
        bundles = _wd(tmp_path, "127.0.0.97") / ".kvorch"
        (bundles / sha).rename(bundles / ("0" * 64))
        again = orch("--json", "up")
        assert again.code == 0, again.err + again.out
        sent = again.json()["bundle"]
        assert sent["node97"]["uploaded"] and sent["node97"]["bytes"] > 10_000 and sent["node97"]["sha256"] == sha
        assert not sent["node13"]["uploaded"] and sent["node13"]["bytes"] == 0
        assert (bundles / sha / "BUNDLE.json").is_file()
        st = orch("--json", "status")
        assert st.code == 0, st.err + st.out
    finally:
        orch("down", "--no-collect", "--grace", "2")
    assert _ours_alive("pipebundle") == []


def test_files_changed_on_a_host_between_two_ups_are_written_again(sshd_cluster, tmp_path):
    orch = loopback_orch(tmp_path, sshd_cluster, "piperewrite")
    try:
        first = orch("up")
        assert first.code == 0, first.err + first.out
        down = orch("down", "--no-collect")
        assert down.code == 0, down.err + down.out
        script = _wd(tmp_path, "127.0.0.97") / "run" / "decode.sh"
        config = _wd(tmp_path, "127.0.0.13") / "example1.yaml"
        want_script, want_config = script.read_text(), config.read_text()
        script.write_text("exit 3\n")
        config.write_text("chunk_size: 1\n")
        script.chmod(0o600)
        again = orch("--json", "up")
        assert again.code == 0, again.err + again.out
        assert script.read_text() == want_script and config.read_text() == want_config
        assert script.stat().st_mode & 0o777 == 0o755 and config.stat().st_mode & 0o777 == 0o644
    finally:
        orch("down", "--no-collect", "--grace", "2")


def test_a_host_whose_files_cannot_be_written_leaves_nothing_running_on_any_host(sshd_cluster, tmp_path):
    orch = loopback_orch(tmp_path, sshd_cluster, "pipewrite")
    # planted: node97's run/ is a file, so nothing can be written there; node13 (the controller's
    # host) is fine and starts its controller in the same moment
    wd97 = _wd(tmp_path, "127.0.0.97")
    wd97.mkdir(parents=True)
    (wd97 / "run").write_text("not a directory\n")
    try:
        r = orch("--json", "up")
        assert r.code != 0
        assert "host node97: upload failed" in r.err, r.err
        assert _ours_alive("pipewrite") == []
        assert not (tmp_path / "state" / "pipewrite.json").exists()  # no run is current
        # fixed, the next up works
        (wd97 / "run").unlink()
        ok = orch("--json", "up")
        assert ok.code == 0, ok.err + ok.out
        assert set(ok.json()["processes"]) == {"controller", "prefill", "decode"}
    finally:
        orch("down", "--no-collect", "--grace", "2")
    assert _ours_alive("pipewrite") == []


def test_a_start_that_fails_after_its_process_began_is_rolled_back_everywhere(sshd_cluster, tmp_path):
    orch = loopback_orch(tmp_path, sshd_cluster, "pipestart")
    # planted: the controller's pidfile is a directory — its process is started, then recording
    # its pid fails (exit 97): it must be stopped by its marker, and nothing else started
    wd13 = _wd(tmp_path, "127.0.0.13")
    (wd13 / "run" / "controller.pid").mkdir(parents=True)
    try:
        r = orch("--json", "up")
        assert r.code != 0
        assert "controller on host node13 failed: could not start" in r.err, r.err
        assert _ours_alive("pipestart") == []
        assert not (tmp_path / "state" / "pipestart.json").exists()  # no run is current
        runs = list((tmp_path / "logs").glob("*/state.json"))  # the failed run's record, stopped
        assert len(runs) == 1 and json.loads(runs[0].read_text())["stopped_at"]
    finally:
        shutil.rmtree(wd13 / "run" / "controller.pid", ignore_errors=True)
        orch("down", "--no-collect", "--grace", "2")
    assert _ours_alive("pipestart") == []
