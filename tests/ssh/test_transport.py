"""Transports against real OpenSSH servers on loopback (and the local transport, same tests)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvorch.hosts import (
    AuthenticationFailed,
    CommandTimeout,
    HostKeyError,
    HostOps,
    HostUnreachable,
    InsecureHostKeyWarning,
    SshTransport,
    resolve_ssh_settings,
    run_parallel,
)

NASTY = "a b $(touch {marker}) `touch {marker}` ; touch {marker} && ' \" \\ \n newline * ? ~ $HOME | > <"


def test_run_returns_exit_code_stdout_and_stderr(any_transport):
    r = any_transport.run("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert not r.ok


def test_env_values_arrive_verbatim_and_run_nothing(any_transport, tmp_path):
    marker = tmp_path / "pwned"
    value = NASTY.format(marker=marker)
    r = any_transport.run('printf %s "$V"', env={"V": value})
    assert r.stdout == value
    assert not marker.exists()


def test_env_name_must_be_an_identifier(any_transport):
    with pytest.raises(ValueError):
        any_transport.run("true", env={"A;touch x": "1"})


def test_put_then_get_roundtrip_with_mode_and_offset_reads(any_transport, tmp_path):
    path = str(tmp_path / "f.bin")
    data = bytes(range(256)) * 1000  # > one SFTP packet
    any_transport.put_bytes(path, data, 0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert any_transport.get_bytes(path) == data
    assert any_transport.get_bytes(path, offset=1000, limit=10) == data[1000:1010]
    assert any_transport.get_bytes(path, offset=len(data)) == b""
    any_transport.put_bytes(path, b"new")  # replaces atomically
    assert any_transport.get_bytes(path) == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_get_missing_file_raises_file_not_found(any_transport, tmp_path):
    with pytest.raises(FileNotFoundError):
        any_transport.get_bytes(str(tmp_path / "nope"))


def test_command_timeout_raises(any_transport):
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout):
        any_transport.run("sleep 5", timeout=0.5)
    assert time.monotonic() - t0 < 3


def test_remote_shell_is_bash_without_rc_files(ssh_transports):
    r = ssh_transports["h13"].run('echo "$BASH_VERSION"; shopt -q login_shell && echo login || echo nologin')
    assert r.stdout.split("\n")[1] == "nologin" and r.stdout[0].isdigit()


def test_unknown_host_key_is_refused_with_the_keyscan_fix(sshd_cluster, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    h = sshd_cluster.host("h13")
    t = sshd_cluster.transport("h13", known_hosts_files=[str(empty)])
    with pytest.raises(HostKeyError) as ei:
        t.run("touch " + str(tmp_path / "ran"))
    e = ei.value
    assert e.kind == "unknown" and e.host == "127.0.0.13" and e.port == h.port
    msg = str(e)
    assert f"ssh-keyscan -p {h.port} 127.0.0.13 >> {empty}" in msg
    assert f"[127.0.0.13]:{h.port}" in msg and e.fingerprint.startswith("SHA256:") and e.fingerprint in msg
    assert not (tmp_path / "ran").exists()
    assert empty.read_text() == ""  # nothing was recorded


def test_changed_host_key_is_refused_with_the_ssh_keygen_fix(sshd_cluster, tmp_path):
    h13, h97 = sshd_cluster.host("h13"), sshd_cluster.host("h97")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{h13.known_hosts_name} {h97.host_key_pub}\n")  # someone else's key
    t = sshd_cluster.transport("h13", known_hosts_files=[str(kh)])
    with pytest.raises(HostKeyError) as ei:
        t.open()
    e = ei.value
    assert e.kind == "changed" and e.fingerprint != e.expected_fingerprint
    assert f"ssh-keygen -R '[127.0.0.13]:{h13.port}' -f {kh}" in str(e)
    assert "HOST KEY CHANGED" in str(e)


def test_opt_out_connects_to_an_unknown_host_and_warns(sshd_cluster, tmp_path, caplog):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    settings = sshd_cluster.settings("h13", known_hosts_files=[str(empty)])
    with pytest.warns(InsecureHostKeyWarning, match="verification is OFF"):
        t = SshTransport(settings, verify_host_keys=False)
    with t:
        assert t.run("echo ok").stdout == "ok\n"
    assert empty.read_text() == ""
    assert any("NOT VERIFIED" in r.getMessage() or "OFF" in r.getMessage() for r in caplog.records)


def test_strict_host_key_checking_no_in_settings_is_the_same_loud_opt_out(sshd_cluster, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.warns(InsecureHostKeyWarning):
        t = sshd_cluster.transport("h13", known_hosts_files=[str(empty)], strict_host_key_checking="no")
    with t:
        assert t.run("true").ok


def test_accept_new_records_an_unknown_key_but_refuses_a_changed_one(sshd_cluster, tmp_path):
    kh = tmp_path / "known_hosts"
    with sshd_cluster.transport("h13", known_hosts_files=[str(kh)], strict_host_key_checking="accept-new") as t:
        assert t.run("true").ok
    assert kh.read_text().strip() == sshd_cluster.host("h13").known_hosts_line
    kh.write_text(f"{sshd_cluster.host('h13').known_hosts_name} {sshd_cluster.host('h97').host_key_pub}\n")
    with pytest.raises(HostKeyError):
        sshd_cluster.transport("h13", known_hosts_files=[str(kh)], strict_host_key_checking="accept-new").open()


def test_no_agent_and_no_key_guessing_unless_configured(sshd_cluster, monkeypatch):
    # even with the right key in ~/.ssh and an agent socket around, only configured keys are used
    monkeypatch.setenv("SSH_AUTH_SOCK", "/nonexistent/agent.sock")
    t = sshd_cluster.transport("h13", identity_files=[])
    assert not t.settings.allow_agent and not t.settings.look_for_keys
    with pytest.raises(AuthenticationFailed, match="Identity files: none"):
        t.open()


def test_connection_refused_is_host_unreachable(sshd_cluster):
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.13", 0))
        port = s.getsockname()[1]
    with pytest.raises(HostUnreachable, match="cannot connect"):
        sshd_cluster.transport("h13", port=port).open()


def test_silent_server_times_out_within_connect_timeout(sshd_cluster):
    with socket.socket() as srv:  # accepts TCP, never says the SSH banner
        srv.bind(("127.0.0.13", 0))
        srv.listen(5)
        t = sshd_cluster.transport("h13", port=srv.getsockname()[1], connect_timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(HostUnreachable):
            t.open()
        assert time.monotonic() - t0 < 3


def test_proxy_jump_goes_through_the_jump_host_and_verifies_it_too(sshd_cluster, tmp_path):
    with sshd_cluster.transport("h97", proxy_jump="h13") as t:
        assert t.run("echo $SSH_CONNECTION").stdout.split()[2] == "127.0.0.97"
    # ProxyJump from an ssh_config; the hop has no block of its own, so it inherits the
    # target's known_hosts, which lacks the jump host's key: refused, naming the jump host.
    h13, h97 = sshd_cluster.host("h13"), sshd_cluster.host("h97")
    only97 = tmp_path / "known_hosts"
    only97.write_text(h97.known_hosts_line + "\n")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host target\n  HostName 127.0.0.97\n  Port {h97.port}\n  User {sshd_cluster.user}\n"
                   f"  IdentityFile {sshd_cluster.client_key}\n  UserKnownHostsFile {only97}\n"
                   f"  ProxyJump {sshd_cluster.user}@127.0.0.13:{h13.port}\n")
    t = SshTransport(resolve_ssh_settings("target", str(cfg)))
    with pytest.raises(HostKeyError) as ei:
        t.open()
    assert ei.value.host == "127.0.0.13" and ei.value.kind == "unknown"
    only97.write_text(h97.known_hosts_line + "\n" + h13.known_hosts_line + "\n")
    with SshTransport(resolve_ssh_settings("target", str(cfg))) as t:
        assert t.run("echo $SSH_CONNECTION").stdout.split()[2] == "127.0.0.97"


def test_one_connection_serves_many_threads_at_once(ssh_transports):
    t = ssh_transports["h13"]
    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(lambda i: t.run(f"echo {i}").stdout, range(30)))
    assert outs == [f"{i}\n" for i in range(30)]


def test_commands_on_one_connection_share_one_remote_shell(ssh_transports):
    """The login shell (and its ~/.bashrc) starts once per connection, not once per command."""
    t = ssh_transports["h13"]
    parents = {t.run("echo $PPID").stdout for _ in range(5)}
    assert len(parents) == 1


def test_output_is_byte_exact_without_a_final_newline_and_when_large(ssh_transports):
    t = ssh_transports["h13"]
    r = t.run("printf 'no newline'; printf 'err, no newline' >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr) == (7, "no newline", "err, no newline")
    big = t.run("head -c 3000000 /dev/zero | tr '\\0' x; echo; seq 1 20000 >&2")
    assert big.stdout == "x" * 3000000 + "\n"
    assert big.stderr.splitlines()[-1] == "20000" and len(big.stderr.splitlines()) == 20000
    assert t.run("echo next").stdout == "next\n"


def test_a_command_that_exits_or_times_out_leaves_the_connection_usable(ssh_transports):
    t = ssh_transports["h13"]
    assert t.run("exit 42").exit_code == 42
    shell = t.run("echo $PPID").stdout
    t.run("(sleep 0.2; kill -9 $PPID) >/dev/null 2>&1 &")  # the kept shell dies between commands
    time.sleep(0.6)
    assert t.run("echo $PPID").stdout != shell  # a new one
    assert t.run("echo after the shell died").stdout == "after the shell died\n"
    with pytest.raises(CommandTimeout):
        t.run("sleep 5", timeout=0.3)
    assert t.run("echo after a timeout").stdout == "after a timeout\n"
    assert t.run("cat; echo stdin-closed").stdout == "stdin-closed\n"  # no command reads the next one


def test_reconnects_after_the_connection_drops(ssh_transports):
    t = ssh_transports["h13"]
    assert t.run("true").ok
    t._conn.transport.close()
    assert t.run("echo again").stdout == "again\n"


def test_facts_tell_loopback_hosts_apart_by_server_address(ssh_transports, tmp_path):
    res = run_parallel(ssh_transports, lambda t: HostOps(t, str(tmp_path)).facts("python3"))
    assert {n: f.server_address for n, f in res.items()} == {"h13": "127.0.0.13", "h97": "127.0.0.97"}
    assert res["h13"].hostname == res["h97"].hostname  # same machine: hostname cannot tell them apart


def test_small_files_pids_and_tails_go_through_the_kept_shell_and_only_log_pulls_start_sftp(
        sshd_cluster, tmp_path):
    # sshd starts sftp-server through the login shell (~/.bashrc again) on a stock server
    t = sshd_cluster.transport("h13")
    try:
        ops = HostOps(t, workdir=str(tmp_path / "w"))
        ops.write_files([("run/a.sh", "echo hello from a\nexec sleep 30\n", 0o755), ("conf/x.yaml", "k: v\n", 0o644)])
        marker = f"ORCHESTRATE_PROCESS=transport-test/{uuid.uuid4().hex[:12]}"  # this test's alone
        pid = ops.start_detached("run/a.sh", "logs/a.log", "run/a.pid", env=dict([marker.split("=", 1)]))
        assert ops.read_pid("run/a.pid") == pid
        assert ops.process_states([pid]) == {pid: "running"}
        deadline = time.monotonic() + 5
        while "hello" not in ops.tail("logs/a.log", 5) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ops.tail("logs/a.log", 5) == "hello from a\n"
        ops.stop_marked(marker, grace_s=2)
        assert ops.read_exit_code("run/a.exit") is not None
        assert not t.sftp_started
        assert ops.read_from("logs/a.log").startswith(b"hello from a\n")  # a log pull: SFTP
        assert t.sftp_started
    finally:
        t.close()


def test_a_login_shell_that_prints_breaks_only_sftp_and_the_error_says_how_to_fix_it(tmp_path):
    from sshd import SFTP_SERVER, SshdCluster, sshd_unavailable_reason

    if sshd_unavailable_reason() or not os.path.exists(SFTP_SERVER):
        pytest.skip(sshd_unavailable_reason() or f"{SFTP_SERVER} is not installed")
    # sshd runs the subsystem through the login shell: this is what an `echo` in ~/.bashrc does
    cluster = SshdCluster(tmp_path / "sshd", {"noisy": "127.0.0.40"},
                          sftp_subsystem=f"echo Welcome; exec {SFTP_SERVER}").start()
    t = cluster.transport("noisy")
    try:
        ops = HostOps(t, workdir=str(tmp_path / "w"))
        ops.write_files([("run/a.sh", "echo hi\n", 0o755)])  # commands and small files: fine
        assert ops.tail("run/a.sh", 1) == "echo hi\n"
        with pytest.raises(HostUnreachable, match=r"~/.bashrc.*\[\[ \$- == \*i\* \]\] \|\| return"):
            ops.read_from("run/a.sh")  # a log pull needs SFTP
    finally:
        t.close()
        cluster.stop()
