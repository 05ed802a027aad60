#!/usr/bin/env bash
# Regenerates daemonset/crd.yaml from the Rust types (checked by tests/crd_stale.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
cargo run -q -- crd > "$tmp"
# Written only after a successful run, so a failure never leaves a truncated file.
cat "$tmp" > daemonset/crd.yaml
