"""Scenarios: the seeds' verification and benchmark workflows, as files in `scenarios/`.

spec.py (file format, loading, --set), expr.py (checks), workbench.py (what a scenario can do
against the running cluster), prompts.py, one module per kind, runner.py (run, verdict, output).
"""
