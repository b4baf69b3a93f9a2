#!/usr/bin/env bash
# Install (once) and run the whole test suite, one module per worker on two workers (pytest-xdist:
# the Ray and Flower tests mostly wait on process start-up, which overlaps); `-n 0` runs in one process.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest -n 2 --dist loadfile "$@"
