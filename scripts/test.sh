#!/usr/bin/env bash
# Set up and run the whole test suite (README.md's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
# pytest exits 5 when it collects no test: that is a failure here too.
exec python3 -m pytest -q "$@"
