"""Controller heartbeats: a heartbeat port and the engines' heartbeat period come together, and the
health check that deregisters silent workers only with both."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvorch.errors import InventoryError
from kvorch.inventory import DEFAULT_HEARTBEAT_S, parse_inventory
from kvorch.plan import build_plan

ROOT = Path(__file__).resolve().parents[2]
SEED = (ROOT / "inventory.yaml").read_text()


def seed_with(mutate) -> str:
    data = yaml.safe_load(SEED)
    mutate(data)
    return yaml.safe_dump(data, sort_keys=False)


def problem_lines(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "inv.yaml")
    return [info.value.message, *info.value.details]


def with_heartbeat_port(d):
    d["controller"]["monitor_ports"]["heartbeat"] = 8082


def config_of(plan, host: str, name: str) -> dict:
    return yaml.safe_load(next(f for f in plan.host(host).files if f.path == name).content)


def test_heartbeat_port_gives_every_engine_the_default_period():
    plan = build_plan(parse_inventory(seed_with(with_heartbeat_port), "inv.yaml"))
    assert config_of(plan, "node13", "example1.yaml")["lmcache_worker_heartbeat_time"] == DEFAULT_HEARTBEAT_S
    assert config_of(plan, "node97", "example2.yaml")["lmcache_worker_heartbeat_time"] == DEFAULT_HEARTBEAT_S
    assert '"heartbeat":8082' in " ".join(plan.process("controller").argv)


def test_an_engine_period_as_written_wins_over_the_default():
    def m(d):
        with_heartbeat_port(d)
        d["engines"][1]["lmcache"] = {"lmcache_worker_heartbeat_time": 5}
    plan = build_plan(parse_inventory(seed_with(m), "inv.yaml"))
    assert config_of(plan, "node97", "example2.yaml")["lmcache_worker_heartbeat_time"] == 5
    assert config_of(plan, "node13", "example1.yaml")["lmcache_worker_heartbeat_time"] == DEFAULT_HEARTBEAT_S


def test_no_heartbeat_port_renders_no_period():
    plan = build_plan(parse_inventory(SEED, "inventory.yaml"))
    assert "lmcache_worker_heartbeat_time" not in config_of(plan, "node13", "example1.yaml")


def test_heartbeat_period_without_a_controller_heartbeat_port_names_the_field():
    text = seed_with(lambda d: d["lmcache"].update(lmcache_worker_heartbeat_time=10))
    lines = problem_lines(text)
    assert any(l.startswith("inv.yaml:") and "lmcache.lmcache_worker_heartbeat_time" in l and "no heartbeat port" in l for l in lines), lines


def test_engine_switching_heartbeats_off_against_a_heartbeat_port_names_its_field():
    def m(d):
        with_heartbeat_port(d)
        d["engines"][0]["lmcache"] = {"lmcache_worker_heartbeat_time": 0}
    lines = problem_lines(seed_with(m))
    assert any("engines[0].lmcache.lmcache_worker_heartbeat_time" in l and "no heartbeats" in l for l in lines), lines


def test_health_check_without_heartbeat_port_names_the_field():
    lines = problem_lines(seed_with(lambda d: d["controller"].update(health_check_interval=30)))
    assert any("controller.health_check_interval" in l and "no heartbeat port" in l for l in lines), lines


def test_health_check_given_as_a_raw_controller_arg_is_checked_too():
    lines = problem_lines(seed_with(lambda d: d["controller"].update(args=["--health-check-interval", "30"])))
    assert any("controller.args[0]" in l for l in lines), lines


def test_worker_timeout_shorter_than_two_heartbeats_names_the_field():
    def m(d):
        with_heartbeat_port(d)
        d["controller"].update(health_check_interval=30, lmcache_worker_timeout=15)
    lines = problem_lines(seed_with(m))
    assert any("controller.lmcache_worker_timeout" in l and "deregisters a live worker" in l for l in lines), lines


def test_heartbeat_port_period_and_health_check_together_render_the_controller_flags():
    def m(d):
        with_heartbeat_port(d)
        d["controller"].update(health_check_interval=30, lmcache_worker_timeout=120)
    argv = build_plan(parse_inventory(seed_with(m), "inv.yaml")).process("controller").argv
    assert argv[-4:] == ["--health-check-interval", "30", "--lmcache-worker-timeout", "120"]
