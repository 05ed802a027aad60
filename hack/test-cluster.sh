#!/usr/bin/env bash
# Runs the integration tests against an existing cluster instead of the simulator.
# Usage: hack/test-cluster.sh PATH_TO_KUBECONFIG
# The tests create their own namespace and Node objects (names start with "bt-"), make the
# Nodes Ready as a kubelet would, install bindlet's BindRequest CRD if no BindRequest CRD
# exists, and clean up (also after a failure). Tests that need the simulator (fault
# injection, its provisioner) print "skipped on a real cluster (<why>)" and return; the
# summary counts them as skipped.
# With kubectl on PATH, the install manifests are also validated by the server
# (a server-side dry run: schemas, and the admission policy's CEL compiles).
set -euo pipefail
kubeconfig=${1:?usage: hack/test-cluster.sh KUBECONFIG}
cd "$(dirname "$0")/.."
kubeconfig=$(realpath "$kubeconfig")
if command -v kubectl >/dev/null; then
  # A dry run creates nothing, so objects in the namespaces the kustomization itself creates
  # answer "namespaces ... not found" when those do not exist yet: only those are expected.
  own_ns=$(kubectl kustomize daemonset/ | awk '/^kind: Namespace$/ { ns = 1 } ns && /^  name:/ { print $2; ns = 0 }' | paste -sd'|')
  out=$(kubectl --kubeconfig "$kubeconfig" apply --dry-run=server -k daemonset/ 2>&1) || true
  unexpected=$(printf '%s\n' "$out" | grep -E '^(error|Error)' | grep -vE "namespaces \"($own_ns)\" not found" || true)
  if [ -n "$unexpected" ]; then
    printf 'daemonset/: refused by the API server (dry run):\n%s\n' "$unexpected"
    exit 1
  fi
  echo "daemonset/: accepted by the API server (dry run)"
fi
tests=()
for f in tests/*.rs; do
  grep -q 'TestEnv' "$f" && tests+=(--test "$(basename "$f" .rs)")
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
BINDLET_TEST_KUBECONFIG=$kubeconfig cargo test --no-fail-fast "${tests[@]}" -- --test-threads=2 --nocapture \
  >"$log" 2>&1 || status=$?
grep -E '^test result|FAILED|panicked' "$log" || true
skipped=$(grep -c 'skipped on a real cluster' "$log" || true)
grep 'skipped on a real cluster' "$log" | sed 's/^/  /' || true
passed=$(awk '/^test result/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^passed/) n += $i } END { print n + 0 }' "$log")
failed=$(awk '/^test result/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^failed/) n += $i } END { print n + 0 }' "$log")
echo "real cluster: $((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$status"
