#!/usr/bin/env bash
# Builds the container image. Usage: hack/image.sh [IMAGE] (default bindlet:0.1.0).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-bindlet:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
docker build -t "$image" .
echo "built $image; deploy with: (cd daemonset && kustomize edit set image bindlet=$image) && kubectl apply -k daemonset/"
