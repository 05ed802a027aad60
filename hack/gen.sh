#!/usr/bin/env bash
# Regenerates every generated file (today: daemonset/crd.yaml; tests fail when stale).
set -euo pipefail
cd "$(dirname "$0")"
./gen-crd.sh
