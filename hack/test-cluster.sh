#!/usr/bin/env bash
# Runs the integration tests against an existing cluster instead of the simulator.
# Usage: hack/test-cluster.sh PATH_TO_KUBECONFIG
# The tests create their own namespace and Node objects (names start with "bt-"),
# install bindlet's BindRequest CRD if no BindRequest CRD exists, and clean up.
# With kubectl on PATH, the install manifests are also validated by the server
# (a server-side dry run: schemas, and the admission policy's CEL compiles).
set -euo pipefail
kubeconfig=${1:?usage: hack/test-cluster.sh KUBECONFIG}
cd "$(dirname "$0")/.."
kubeconfig=$(realpath "$kubeconfig")
if command -v kubectl >/dev/null; then
  kubectl --kubeconfig "$kubeconfig" apply --dry-run=server -k daemonset/ >/dev/null
  echo "daemonset/: accepted by the API server (dry run)"
fi
BINDLET_TEST_KUBECONFIG=$kubeconfig cargo test \
  --test agent_binding --test agent_resilience --test diag_server --test diag_manifests \
  --test manual_bind --test gpu_agent --test gpu_sharing --test sim_kubelet \
  -- --test-threads=2
