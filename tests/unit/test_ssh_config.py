"""resolve_ssh_settings: an OpenSSH config file plus inventory overrides (no network)."""

from __future__ import annotations

import base64
import os

import paramiko
import pytest

from kvorch.hosts.ssh import changed_key_message, unknown_key_message
from kvorch.hosts.ssh_config import SshSettings, SshSettingsError, resolve_ssh_settings, split_host_spec

CONFIG = """
Host h13 127.0.0.13
    HostName 127.0.0.13
    Port 2222
    User root
    IdentityFile ~/keys/id_test
    UserKnownHostsFile ~/kh/one /tmp/kh/two
    StrictHostKeyChecking yes
    ConnectTimeout 7

Host behind
    HostName 10.0.0.5
    ProxyJump h13,jumper@other:2200
    StrictHostKeyChecking accept-new

Host lax
    HostName 127.0.0.50
    StrictHostKeyChecking no

Host *
    User fallback
"""


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    p = tmp_path / "ssh_config"
    p.write_text(CONFIG)
    return str(p)


def test_alias_resolves_every_supported_keyword(cfg, tmp_path):
    s = resolve_ssh_settings("h13", cfg)
    assert (s.hostname, s.port, s.user, s.connect_timeout) == ("127.0.0.13", 2222, "root", 7.0)
    assert s.identity_files == [f"{tmp_path}/keys/id_test"]
    assert s.known_hosts_files == [f"{tmp_path}/kh/one", "/tmp/kh/two"]
    assert s.verify_host_keys and s.strict_host_key_checking == "yes"
    assert s.alias == "h13" and s.ssh_config_path == cfg
    assert s.known_hosts_name == "[127.0.0.13]:2222"


def test_inventory_overrides_win_and_none_is_ignored(cfg):
    s = resolve_ssh_settings("h13", cfg, {"port": 2300, "user": "alice", "identity_files": None,
                                          "known_hosts_files": "/etc/kh"})
    assert (s.port, s.user) == (2300, "alice")
    assert s.identity_files[0].endswith("keys/id_test")
    assert s.known_hosts_files == ["/etc/kh"]


def test_agent_and_key_guessing_are_off_unless_overridden(cfg):
    s = resolve_ssh_settings("h13", cfg)
    assert (s.allow_agent, s.look_for_keys) == (False, False)
    s = resolve_ssh_settings("h13", cfg, {"allow_agent": True, "look_for_keys": True})
    assert (s.allow_agent, s.look_for_keys) == (True, True)


def test_proxy_jump_and_accept_new_are_read(cfg):
    s = resolve_ssh_settings("behind", cfg)
    assert s.proxy_jump == "h13,jumper@other:2200"
    assert s.strict_host_key_checking == "accept-new" and s.verify_host_keys


def test_strict_host_key_checking_no_turns_verification_off(cfg):
    assert not resolve_ssh_settings("lax", cfg).verify_host_keys
    assert resolve_ssh_settings("lax", cfg, {"strict_host_key_checking": True}).verify_host_keys


def test_unknown_name_is_its_own_address_on_port_22(cfg):
    s = resolve_ssh_settings("192.0.2.7", cfg)
    assert (s.hostname, s.port, s.user) == ("192.0.2.7", 22, "fallback")
    assert s.known_hosts_name == "192.0.2.7"
    assert s.effective_known_hosts_files() == [os.path.expanduser("~/.ssh/known_hosts")]


def test_user_at_host_colon_port_spec_beats_the_config(cfg):
    s = resolve_ssh_settings("bob@h13:2400", cfg)
    assert (s.user, s.hostname, s.port) == ("bob", "127.0.0.13", 2400)
    assert split_host_spec("[::1]:2222") == (None, "::1", 2222)
    assert split_host_spec("host") == (None, "host", None)


def test_default_config_is_home_ssh_config_and_may_be_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = resolve_ssh_settings("127.0.0.13")
    assert s.ssh_config_path is None and s.hostname == "127.0.0.13"
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host x\n  HostName 127.0.0.9\n  Port 2201\n")
    s = resolve_ssh_settings("x")
    assert (s.hostname, s.port) == ("127.0.0.9", 2201)


def test_explicit_config_path_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_ssh_settings("h13", str(tmp_path / "missing"))


def test_bad_values_are_rejected(cfg):
    with pytest.raises(SshSettingsError):
        resolve_ssh_settings("h13", cfg, {"no_such_setting": 1})
    with pytest.raises(SshSettingsError):
        resolve_ssh_settings("h13", cfg, {"port": 70000})
    with pytest.raises(SshSettingsError):  # would become an ssh option
        SshSettings(hostname="-oProxyCommand=touch x")
    with pytest.raises(SshSettingsError):
        SshSettings(hostname="a b")


def _key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    kind, b64 = pub.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(b64))


def test_fix_messages_name_host_port_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    k1, k2 = _key(), _key()
    s22 = SshSettings(hostname="10.1.2.3", user="u")
    m = unknown_key_message(s22, k1)
    assert "ssh-keyscan 10.1.2.3 >> ~/.ssh/known_hosts" in m and "10.1.2.3" in m
    s = SshSettings(hostname="10.1.2.3", port=2222, user="u", known_hosts_files=["/x/kh"])
    assert "ssh-keyscan -p 2222 10.1.2.3 >> /x/kh" in unknown_key_message(s, k1)
    m = changed_key_message(s, k1, k2)
    assert "ssh-keygen -R '[10.1.2.3]:2222' -f /x/kh" in m and "ssh-keyscan -p 2222 10.1.2.3 >> /x/kh" in m


def test_settings_round_trip_through_their_plain_form_and_reject_what_ssh_would_not_take():
    s = SshSettings(hostname=" 10.1.2.3 ", port="2222", user="u", known_hosts_files="~/kh", strict_host_key_checking=False)
    assert (s.hostname, s.port, s.strict_host_key_checking, s.known_hosts_files) == (
        "10.1.2.3", 2222, "no", [os.path.expanduser("~/kh")])
    assert SshSettings.from_dict(s.to_dict()) == s and not s.verify_host_keys
    for bad in ({"strict_host_key_checking": "maybe"}, {"port": 0}, {"port": "22x"}, {"connect_timeout": 0},
                {"allow_agent": "yes"}, {"user": None}, {"identity_files": 5}):
        with pytest.raises(SshSettingsError):
            SshSettings(hostname="h", **bad)
    with pytest.raises(SshSettingsError, match="no_such"):
        SshSettings.from_dict({"hostname": "h", "no_such": 1})


@pytest.mark.parametrize("line, field", [("Port abc", "Port"), ("ConnectTimeout soon", "ConnectTimeout")])
def test_a_bad_number_in_the_ssh_config_names_the_setting_and_the_file(tmp_path, line, field):
    path = tmp_path / "config"
    path.write_text(f"Host bad\n    {line}\n")
    with pytest.raises(SshSettingsError) as e:
        resolve_ssh_settings("bad", str(path))
    assert e.value.field == field and str(path) in str(e.value)


def test_a_bad_ssh_config_is_a_user_error_naming_the_host_not_an_internal_error(tmp_path):
    from kvorch.errors import UserError
    from kvorch.inventory import load_inventory
    from kvorch.nodes import ssh_settings_of

    path = tmp_path / "config"
    path.write_text("Host *\n    Port abc\n")
    inv = load_inventory(os.path.join(os.path.dirname(__file__), "..", "..", "inventories", "loopback.yaml"))
    name = next(iter(inv.hosts))
    with pytest.raises(UserError) as e:
        h = inv.hosts[name]
        ssh_settings_of(name, h.ssh_target(), h.ssh_overrides(), str(path))
    assert f"host {name}" in e.value.message and "Port" in e.value.message and f"hosts.{name}.ssh" in (e.value.hint or "")
