#!/usr/bin/env bash
# Runs every check CI runs.
set -euo pipefail
exec "$(dirname "$0")/../.ci/run"
