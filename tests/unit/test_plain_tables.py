"""The plain-text tables of `status` and `preflight`: every value shown, columns aligned by what
is visible (colours do not count), long columns folded to the terminal's width, nothing cut."""

from __future__ import annotations

import click

from kvorch.cli.plain import format_checks, format_status, table, visible_len
from kvorch.preflight import Check


def _strip(text: str) -> str:
    return click.unstyle(text)


def _row(process: str, state: str = "running", **kw) -> dict:
    return {"process": process, "host": "node13", "pid": 4242, "server_pid": 4243, "port": 8010, "state": state,
            "uptime_s": 61.4, "last_log_line": "ready", **kw}


def test_status_shows_one_row_per_process_with_its_values():
    text = _strip(format_status({"cluster": "seed", "run_id": "seed-1", "processes": [_row("prefill"),
                                 _row("decode", "dead", pid=None, server_pid=None, uptime_s=None, detail="exit 1")]}))
    lines = text.splitlines()
    assert lines[0] == "cluster seed (run seed-1)"
    assert lines[3].split() == ["prefill", "node13", "4242", "4243", "8010", "running", "61", "s", "ready"]
    assert lines[4].split() == ["decode", "node13", "-", "-", "8010", "dead", "exit", "1", "-", "ready"]


def test_columns_line_up_whatever_the_colours():
    text = format_status({"cluster": "c", "processes": [_row("a"), _row("bb", "dead")]})
    plain = _strip(text).splitlines()
    starts = {ln.index("node13") for ln in plain[3:]}
    assert len(starts) == 1 and "\x1b[" in text  # styled, yet aligned


def test_a_host_that_failed_is_a_line_under_the_table():
    text = _strip(format_status({"cluster": "c", "processes": [_row("a"), {"process": "*", "host": "node97",
                                 "state": "unreachable", "error": "no SSH answer from 127.0.0.97:22 within 10s"}]}))
    assert text.splitlines()[-1] == "node97: no SSH answer from 127.0.0.97:22 within 10s"


def test_a_long_column_folds_to_the_width_and_loses_no_word():
    line = "INFO " + " ".join(f"word{i}" for i in range(15))  # (at most 120 characters are shown)
    text = _strip(format_status({"cluster": "c", "processes": [_row("a", last_log_line=line)]}, width=80))
    body = text.splitlines()[3:]
    assert len(body) > 1 and max(visible_len(ln) for ln in text.splitlines()) <= 80
    assert " ".join(" ".join(ln.split()) for ln in body).endswith(line)


def test_without_a_width_nothing_folds():
    line = "x" * 110
    text = _strip(format_status({"cluster": "c", "processes": [_row("a", last_log_line=line)]}))
    assert len(text.splitlines()) == 4 and text.splitlines()[3].endswith(line)


def test_preflight_shows_each_check_with_its_fix():
    checks = [Check("node13", "python", "ok", "/usr/bin/python3: Python 3.11.7"),
              Check("node97", "vllm", "fail", "vllm is not installed for /opt/venv/bin/python",
                    "install vllm into /opt/venv/bin/python")]
    lines = _strip(format_checks(checks, width=200)).splitlines()
    assert lines[0] == "preflight"
    assert lines[3].split()[:3] == ["node13", "python", "ok"]
    assert lines[4].split()[:3] == ["node97", "vllm", "fail"] and lines[4].endswith("install vllm into /opt/venv/bin/python")


def test_table_pads_short_rows_to_the_header():
    assert table(["a", "long header"], [["xyz", "1"]]).splitlines() == ["a    long header", "───  ───────────", "xyz  1"]
