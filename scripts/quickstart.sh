#!/usr/bin/env bash
# Install (once) and run the quickstart experiment: FedAvg on offline digits, Dirichlet(0.5).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
fedsim run experiments/quickstart.toml "$@"
