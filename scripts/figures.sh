#!/usr/bin/env bash
# The figures README.md quotes, measured on this machine: runs the real-engine demo (up → reuse →
# reuse-2node → collect → down on inventories/local-cpu.yaml; ≈ 8 GB RAM, a few minutes) and prints
# the lines the README quotes, with the CPU model from /proc/cpuinfo beside them.
#   bash scripts/figures.sh                      run the demo, then print
#   bash scripts/figures.sh -i INVENTORY         another inventory (e.g. one with a second model)
#   bash scripts/figures.sh --from RUN_DIR       print from a run folder already there (no run)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
INV=inventories/local-cpu.yaml
FROM=""
while [ $# -gt 0 ]; do
  case "$1" in
    -i|--inventory) INV=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    *) echo "figures.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$FROM" ]; then
  "$PY" orchestrate.py -i "$INV" demo
  code=$?
  [ "$code" = 2 ] && exit 2                     # could not run: the demo said why
  FROM=$(readlink -f "${ORCHESTRATE_LOGS:-logs}/latest")
fi
"$PY" -m kvorch.figures "$FROM"
