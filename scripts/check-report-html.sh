#!/usr/bin/env bash
# Opens a `consort report` page in headless Chromium and fails unless it loads cleanly:
#   scripts/check-report-html.sh            # builds a report from generated scores, then checks it
#   scripts/check-report-html.sh PAGE.html  # checks an existing page
# Checks: the browser renders it (exit 0), no console message (the page has no script, so any is
# an error), no network request (Chromium's net log holds no http/https/ws URL), and the rendered
# DOM holds the four charts as inline SVG. Before that, a page that breaks each rule must fail,
# so the checker itself is tested. Needs chromium-headless-shell (or chromium); as root with
# apt-get and no browser, installs Debian's chromium-headless-shell (CI does this).
# CONSORT=path/to/consort overrides the binary (default target/release/consort).
set -euo pipefail
bin=${CONSORT:-${CARGO_TARGET_DIR:-target}/release/consort}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

browser=$(command -v chromium-headless-shell || command -v chromium || true)
if [ -z "$browser" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium-headless-shell (Debian)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null
  browser=$(command -v chromium-headless-shell)
fi
[ -n "$browser" ] || { echo "no chromium-headless-shell or chromium found" >&2; exit 1; }

# check PAGE: 0 if the page loads cleanly with the four charts, else 1 with the reason on stderr.
check() {
  local page=$1 out="$work/dom.html" log="$work/console.log" net="$work/net.json"
  rm -f "$out" "$log" "$net"
  if ! timeout 120 "$browser" --headless --no-sandbox --disable-gpu --no-first-run \
    --host-resolver-rules="MAP * ~NOTFOUND" --enable-logging=stderr --v=0 \
    --log-net-log="$net" --dump-dom "file://$(realpath "$page")" >"$out" 2>"$log"; then
    echo "the browser failed on $page" >&2
    return 1
  fi
  if grep -q ':CONSOLE' "$log"; then
    echo "console messages on $page:" >&2
    grep ':CONSOLE' "$log" >&2
    return 1
  fi
  if grep -Eo '"url":"(https?|wss?|ftp):[^"]*"' "$net" >&2; then
    echo "network requests from $page (above)" >&2
    return 1
  fi
  for id in roc-chart ks-chart distribution-chart gain-chart; do
    # The figure, then its inline SVG with drawn content.
    if ! tr -d '\n' <"$out" | grep -Eq "<figure id=\"$id\"><svg [^>]*><rect [^>]*>.*</svg><figcaption>"; then
      echo "$page: chart $id missing from the rendered page" >&2
      return 1
    fi
  done
}

# The checker must reject a page that logs, one that fetches, and one without the charts.
printf '<!DOCTYPE html><p>x</p><script>console.error("boom")</script>\n' >"$work/console.html"
printf '<!DOCTYPE html><p>x</p><img src="http://example.invalid/x.png">\n' >"$work/fetch.html"
printf '<!DOCTYPE html><p>no charts</p>\n' >"$work/empty.html"
for bad in console fetch empty; do
  if check "$work/$bad.html" 2>/dev/null; then
    echo "the checker accepted a broken page ($bad)" >&2
    exit 1
  fi
done

page=${1:-}
if [ -z "$page" ]; then
  # 4000 scored rows (deterministic), a points column, a baseline, and a column name to escape.
  awk 'BEGIN { srand(7); print "id,points,<b>p&\"q\"</b>,label";
    for (i = 0; i < 4000; i++) { y = rand() < 0.2; p = (rand() + 0.7 * y) / 1.7;
      printf "k%d,%d,%.6f,%d\n", i, 600 - int(100 * p), p, y } }' >"$work/scored.csv"
  awk 'BEGIN { srand(8); print "id,<b>p&\"q\"</b>";
    for (i = 0; i < 4000; i++) { y = rand() < 0.2; printf "k%d,%.6f\n", i, (rand() + 0.6 * y) / 1.6 } }' >"$work/train.csv"
  "$bin" report --scores "$work/scored.csv" --label label --score-column '<b>p&"q"</b>' --points-column points \
    --baseline "$work/train.csv" --out "$work/report.html" --json-out "$work/report.json" >&2
  page="$work/report.html"
fi
check "$page"
echo "report page OK in $("$browser" --version 2>/dev/null | head -n 1): no console message, no network request, four charts"
