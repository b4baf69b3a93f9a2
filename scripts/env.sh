#!/usr/bin/env bash
# Create the project's virtualenv (.venv, or $FEDSIM_VENV) once and install fedsim into it with
# the test, Ray, Flower, TensorBoard and privacy (Opacus) extras. Without a GPU the pinned CPU
# build of torch is installed first, so the torch range in pyproject.toml is already met and no
# CUDA build is pulled in.
# Re-running is instant until pyproject.toml or this script changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${FEDSIM_VENV:-.venv}"
stamp="$VENV/.installed-$(cat pyproject.toml scripts/env.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    fi
    "$VENV/bin/python" -m pip install -q -e ".[test,ray,flower,tensorboard,privacy]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
