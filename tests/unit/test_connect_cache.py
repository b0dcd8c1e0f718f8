"""The SSH hosts remembered for an inventory file: found again only for the very same bytes of the
inventory and of the ssh_config, stored only where the run state lives, never a secret."""

from __future__ import annotations

import os

import pytest

from kvorch import connect_cache

HOSTS = [{"name": "node13", "address": "127.0.0.13", "settings": {"hostname": "127.0.0.13", "port": 2222}}]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATE_STATE", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    inv = tmp_path / "inv.yaml"
    inv.write_text("cluster: a\n")
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host node13\n  Port 2222\n")
    return str(inv), str(cfg)


def test_what_was_remembered_is_found_for_the_same_files(files):
    inv, cfg = files
    connect_cache.remember(inv, cfg, HOSTS)
    assert connect_cache.lookup(inv, cfg) == HOSTS


def test_one_changed_byte_of_the_inventory_finds_nothing(files):
    inv, cfg = files
    connect_cache.remember(inv, cfg, HOSTS)
    with open(inv, "a") as f:
        f.write(" ")
    assert connect_cache.lookup(inv, cfg) is None


def test_a_changed_ssh_config_finds_nothing(files):
    inv, cfg = files
    connect_cache.remember(inv, cfg, HOSTS)
    with open(cfg, "a") as f:
        f.write("  User other\n")
    assert connect_cache.lookup(inv, cfg) is None


def test_another_ssh_config_or_home_finds_nothing(files, monkeypatch, tmp_path):
    inv, cfg = files
    connect_cache.remember(inv, cfg, HOSTS)
    other = tmp_path / "other_config"
    other.write_text(open(cfg).read())
    assert connect_cache.lookup(inv, str(other)) is None
    monkeypatch.setenv("HOME", str(tmp_path))
    assert connect_cache.lookup(inv, cfg) is None


def test_nothing_is_stored_where_no_run_state_exists(files, monkeypatch, tmp_path):
    inv, cfg = files
    monkeypatch.setenv("ORCHESTRATE_STATE", str(tmp_path / "never-up"))
    connect_cache.remember(inv, cfg, HOSTS)
    assert not (tmp_path / "never-up").exists() and connect_cache.lookup(inv, cfg) is None


def test_the_entry_is_private_to_the_user(files, tmp_path):
    inv, cfg = files
    connect_cache.remember(inv, cfg, HOSTS)
    (entry,) = (tmp_path / "state" / "connect").iterdir()
    assert entry.stat().st_mode & 0o777 == 0o600


def test_a_damaged_entry_finds_nothing(files, tmp_path):
    inv, cfg = files
    connect_cache.remember(inv, cfg, HOSTS)
    (entry,) = (tmp_path / "state" / "connect").iterdir()
    entry.write_text("{not json")
    assert connect_cache.lookup(inv, cfg) is None
    os.remove(entry)
    assert connect_cache.lookup(inv, cfg) is None
