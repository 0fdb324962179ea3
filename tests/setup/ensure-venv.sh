#!/usr/bin/env bash
# Create the project's virtualenv; on a fresh Debian 12 the venv module needs python3-venv.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "installing python3-venv (the venv module is missing)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv python3-pip >/dev/null
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check -q --upgrade pip setuptools wheel
