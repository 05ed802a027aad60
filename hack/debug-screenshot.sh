#!/usr/bin/env bash
# Looks at the /debug page in a real browser: runs `bindlet demo --keep-running`, renders
# its /debug page with headless Chromium, saves a screenshot, and fails unless the page
# shows the node, its readiness, the GPUs, the node's resources and recent requests.
#
#   hack/debug-screenshot.sh [OUT.png]      (default: hack/debug-page.png)
#
# Needs Chromium (Debian: apt-get install chromium). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-hack/debug-page.png}

chrome=""
for c in chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null; then
    chrome=$c
    break
  fi
done
if [ -z "$chrome" ]; then
  echo "debug-screenshot: no Chromium found (apt-get install chromium)" >&2
  exit 2
fi

cargo build --quiet --bin bindlet
bin="${CARGO_TARGET_DIR:-target}/debug/bindlet"
work=$(mktemp -d)
log="$work/demo.log"
"$bin" demo --pods 60 --keep-running >"$log" 2>&1 &
demo=$!
cleanup() {
  # SIGINT is the demo's Ctrl-C: it stops the agent and the simulator cleanly.
  kill -INT "$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The demo prints the diagnostics URL at start and "keep-running:" once every request settled.
for _ in $(seq 1 360); do
  if grep -q '^keep-running:' "$log"; then
    break
  fi
  if ! kill -0 "$demo" 2>/dev/null; then
    cat "$log" >&2
    echo "debug-screenshot: the demo exited early" >&2
    exit 1
  fi
  sleep 0.5
done
url=$(grep -o 'http://[^ ]*/debug' "$log" | head -n 1 || true)
if [ -z "$url" ] || ! grep -q '^keep-running:' "$log"; then
  cat "$log" >&2
  echo "debug-screenshot: the demo did not come up" >&2
  exit 1
fi
echo "debug-screenshot: rendering $url"

flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run)
"$chrome" "${flags[@]}" --window-size=1280,1400 --screenshot="$work/page.png" "$url" \
  >"$work/chrome.log" 2>&1 || { cat "$work/chrome.log" >&2; exit 1; }
"$chrome" "${flags[@]}" --dump-dom "$url" >"$work/dom.html" 2>"$work/chrome.log" ||
  { cat "$work/chrome.log" >&2; exit 1; }

# What the browser built from the page (not the raw HTML) must show each part.
fail=0
check() {
  if grep -Eq "$2" "$work/dom.html"; then
    echo "  ok: $1"
  else
    echo "  MISSING: $1 (/$2/)" >&2
    fail=1
  fi
}
check "the node" '<h1>bindlet on gpu-node-1</h1>'
check "readiness: ready" '<td class="ok">ready</td>'
check "GPUs with their health" 'GPU-00000000-demo.*healthy'
check "an unhealthy GPU" 'unhealthy: '
check "node memory and CPUs" 'node memory</th><td>[0-9.]+ [KMGT]iB available of'
check "the agent process" 'agent process</th><td>[0-9.]+ [KMG]iB resident'
check "recent requests" 'Recent BindRequests \([1-9][0-9]*\)'
check "a request's attempts" 'bindlet-demo/[a-z0-9-]+<br>'
if [ "$fail" != 0 ]; then
  echo "debug-screenshot: the page is missing parts (DOM above)" >&2
  exit 1
fi
cp "$work/page.png" "$out"
echo "debug-screenshot: $out ($(wc -c <"$out") bytes)"
