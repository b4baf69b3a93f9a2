#!/usr/bin/env bash
# Install (once) and run the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest "$@"
