#!/usr/bin/env bash
# Runs every check CI runs (.ci/run: fmt, clippy, tests), then, when the tools are
# installed, renders the kustomization and lints the shell scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/run
if command -v kubectl >/dev/null; then
  kubectl kustomize daemonset/ >/dev/null && echo "daemonset/: kustomize renders"
fi
if command -v shellcheck >/dev/null; then
  shellcheck hack/*.sh .ci/run
fi
