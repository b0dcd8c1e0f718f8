"""The inventory: what is accepted, and what each mistake says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvorch.errors import InventoryError
from kvorch.inventory import load_inventory, parse_inventory

ROOT = Path(__file__).resolve().parents[2]
SEED = (ROOT / "inventory.yaml").read_text()


def seed_with(mutate) -> str:
    data = yaml.safe_load(SEED)
    mutate(data)
    return yaml.safe_dump(data, sort_keys=False)


def error_of(text: str) -> InventoryError:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "inv.yaml")
    return info.value


def all_lines(err: InventoryError) -> str:
    return "\n".join([err.message, *err.details, err.hint or ""])


@pytest.mark.parametrize("path", ["inventory.yaml", "inventories/local.yaml", "inventories/loopback.yaml"])
def test_shipped_inventories_load(path):
    inv = load_inventory(ROOT / path)
    assert [e.name for e in inv.engines] == ["prefill", "decode"]


def test_seed_inventory_describes_the_seed_cluster():
    inv = load_inventory(ROOT / "inventory.yaml")
    assert {h.address for h in inv.hosts.values()} == {"192.168.110.13", "192.168.110.97"}
    assert inv.controller and inv.hosts[inv.controller.host].address == "192.168.110.13"
    assert (inv.controller.port, inv.controller.monitor_ports.pull, inv.controller.monitor_ports.reply) == (9000, 8300, 8400)
    assert inv.env["PYTHONHASHSEED"] == "123" and inv.env["UCX_TLS"] == "tcp" and inv.env["CUDA_VISIBLE_DEVICES"] == "0"
    assert inv.vllm.max_model_len == 1600 and inv.vllm.gpu_memory_utilization == 0.9


def test_unknown_key_names_file_line_and_field():
    text = SEED.replace("    role: decode\n", "    role: decode\n    colour: blue\n")
    err = error_of(text)
    line = text.splitlines().index("    colour: blue") + 1
    assert f"inv.yaml:{line}: engines[1].colour: unknown field 'colour'" in all_lines(err)


def test_bad_type_is_rejected_with_field_path():
    err = error_of(seed_with(lambda d: d["engines"][0].update(port="eighty")))
    assert "engines[0].port" in all_lines(err)


def test_port_out_of_range_is_rejected():
    err = error_of(seed_with(lambda d: d["engines"][0].update(port=70000)))
    assert "engines[0].port" in all_lines(err) and "65535" in all_lines(err)


def test_duplicate_instance_ids_are_rejected():
    err = error_of(seed_with(lambda d: d["engines"][1].update(instance_id="lmcache_instance_1")))
    assert "engines[1].instance_id: duplicate instance_id 'lmcache_instance_1'" in all_lines(err)


def test_two_services_on_one_host_port_are_rejected():
    def clash(d):
        d["engines"][1]["host"] = "node13"
        d["engines"][1]["p2p_init_port"] = 8201
    err = error_of(seed_with(clash))
    assert "port 8201 on host 'node13' is already used by engine prefill p2p_lookup_port" in all_lines(err)


def test_engine_port_clashing_with_controller_monitor_port_is_rejected():
    err = error_of(seed_with(lambda d: d["engines"][0].update(port=8300)))
    assert "already used by controller pull" in all_lines(err)


def test_p2p_engine_without_controller_is_rejected():
    err = error_of(seed_with(lambda d: d.pop("controller")))
    assert "controller: topology p2p needs an LMCache controller" in all_lines(err)


def test_differing_pythonhashseed_is_rejected():
    err = error_of(seed_with(lambda d: d["engines"][1].setdefault("env", {}).update(PYTHONHASHSEED=7)))
    text = all_lines(err)
    assert "engines[1].env.PYTHONHASHSEED: PYTHONHASHSEED differs across engines (prefill=123, decode=7)" in text


def test_missing_pythonhashseed_is_rejected_for_p2p():
    err = error_of(seed_with(lambda d: d["env"].pop("PYTHONHASHSEED")))
    assert "PYTHONHASHSEED is not set" in all_lines(err)


def test_unknown_host_reference_is_rejected():
    err = error_of(seed_with(lambda d: d["engines"][1].update(host="node99")))
    assert "engines[1].host: unknown host 'node99'" in all_lines(err)


def test_renamed_lmcache_key_is_rejected_naming_the_key():
    err = error_of(seed_with(lambda d: d["lmcache"].update(controller_url="192.168.110.13:9000")))
    assert "lmcache.controller_url" in all_lines(err)
    assert "'controller_url' is not an LMCache 0.5.6 key" in all_lines(err)


def test_unknown_lmcache_key_is_rejected():
    err = error_of(seed_with(lambda d: d["engines"][0].setdefault("lmcache", {}).update(nixl_role="sender")))
    assert "engines[0].lmcache.nixl_role" in all_lines(err)


def test_derived_lmcache_key_is_rejected():
    err = error_of(seed_with(lambda d: d["lmcache"].update(p2p_host="10.0.0.1")))
    assert "lmcache.p2p_host: p2p_host is derived" in all_lines(err)


def test_secret_in_controller_env_is_rejected():
    err = error_of(seed_with(lambda d: d["controller"].update(env={"HF_TOKEN": "hf_x"})))
    assert "controller.env.HF_TOKEN: a secret must not be given to the LMCache controller" in all_lines(err)
    assert "hf_x" not in all_lines(err)


def test_yaml_syntax_error_shows_file_and_line():
    err = error_of("cluster: x\nhosts:\n  a: [unclosed\n")
    assert err.message.startswith("inv.yaml:")
    assert "YAML syntax error" in err.message


def test_missing_file_says_how_to_pass_one(tmp_path):
    with pytest.raises(InventoryError) as info:
        load_inventory(tmp_path / "nope.yaml")
    assert "no such inventory file" in info.value.message and "--inventory" in (info.value.hint or "")


def test_several_problems_are_all_reported():
    def two(d):
        d["engines"][0]["port"] = 70000
        d["engines"][1]["colour"] = "blue"
    err = error_of(seed_with(two))
    assert "2 problems" in err.message and len(err.details) == 2
