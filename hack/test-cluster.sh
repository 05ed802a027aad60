#!/usr/bin/env bash
# Runs the integration tests against an existing cluster instead of the simulator.
# Usage: hack/test-cluster.sh PATH_TO_KUBECONFIG
# The tests create their own namespace and Node objects (names start with "bt-"),
# install bindlet's BindRequest CRD if no BindRequest CRD exists, and clean up.
set -euo pipefail
kubeconfig=${1:?usage: hack/test-cluster.sh KUBECONFIG}
cd "$(dirname "$0")/.."
BINDLET_TEST_KUBECONFIG=$(realpath "$kubeconfig") cargo test --test agent_binding --test agent_resilience -- --test-threads=2
