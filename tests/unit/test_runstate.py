"""The run state file: plain data written by `up`, read back field for field; a damaged or
foreign file is a user error naming the file, never a traceback or a half-read state."""

from __future__ import annotations

import json

import pytest

from kvorch.errors import UserError
from kvorch.runstate import HostState, ProcessState, RunState, load_state, save_state


def _state() -> RunState:
    s = RunState(run_id="c-1", cluster="c", inventory="inv.yaml", started_at="t0")
    s.hosts["h"] = HostState(name="h", address="127.0.0.1", workdir="/w", files={"run/a.sh": "ab"})
    s.processes["e"] = ProcessState(name="e", host="h", pid=7, ports=[8000], log_path="/w/logs/e.log",
                                    health_url="http://127.0.0.1:8000/health", members=[7, 9])
    return s


@pytest.fixture
def state_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("ORCHESTRATE_LOGS", str(tmp_path / "logs"))
    return tmp_path


def test_a_saved_state_loads_back_equal(state_dirs):
    save_state(_state())
    assert load_state("c") == _state()
    on_disk = json.loads((state_dirs / "logs" / "c-1" / "state.json").read_text())
    assert on_disk["processes"]["e"]["members"] == [7, 9]


def test_a_field_of_a_newer_version_is_ignored(state_dirs):
    save_state(_state())
    path = state_dirs / "state" / "c.json"
    data = json.loads(path.read_text())
    data["future_field"] = 1
    data["processes"]["e"]["also_new"] = "x"
    path.write_text(json.dumps(data))
    assert load_state("c") == _state()


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("run_id"),                                   # a required field missing
    lambda d: d.update(started_at=5),                            # of the wrong type
    lambda d: d["processes"]["e"].update(members=["7"]),         # a nested one
    lambda d: d.update(hosts=[]),                                # not an object
], ids=["missing", "wrong-type", "nested-wrong-type", "not-an-object"])
def test_a_damaged_state_is_a_user_error_naming_the_file(state_dirs, damage):
    save_state(_state())
    path = state_dirs / "state" / "c.json"
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as e:
        load_state("c")
    assert str(path) in e.value.message and "unreadable" in e.value.message


def test_a_truncated_state_is_a_user_error(state_dirs):
    save_state(_state())
    path = state_dirs / "state" / "c.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(UserError):
        load_state("c")
