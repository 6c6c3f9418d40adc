#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine with Rust (idempotent).
# Used by tests/run.sh and .ci/run; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
# chromium: renders the status page headless in tests/tests/ops.rs;
# python3-prometheus-client: an independent parser for the /metrics text.
for pkg in pkg-config libdbus-1-dev libudev-dev chromium python3-prometheus-client; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The broker is started by the test harness on a free port, never as a system service.

# The independent FHIR R4 validator lives in its own virtualenv inside the clone
# (fhir.resources 6.4.0 is the last R4 release and needs pydantic 1).
if ! tests/.venv/bin/python3 -c 'import fhir.resources' >/dev/null 2>&1; then
    echo "setup: installing the independent FHIR validator into tests/.venv"
    if ! python3 -m venv tests/.venv >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv tests/.venv
    fi
    tests/.venv/bin/pip install -q -r tests/requirements.txt
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add thumbv7em-none-eabihf >/dev/null
