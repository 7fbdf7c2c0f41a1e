#!/usr/bin/env bash
# Refresh the dashboard's vendored front-end files from the npm registry (development time only).
# The results are committed under src/autopyfactory/web/static/vendor/, so the daemon, the tests and
# CI need neither npm nor the network, and the pages load nothing from a CDN.
#
#   uplot     1.6.32  dist/uPlot.iife.min.js, dist/uPlot.min.css   (MIT)  time-series charts
#   htmx.org  2.0.11  dist/htmx.min.js                              (0BSD) live partial updates
#
# Change a version here, run the script, look at the pages (tests/test_web_browser.py), commit.
set -euo pipefail
UPLOT=${UPLOT:-1.6.32}
HTMX=${HTMX:-2.0.11}
DEST="$(cd "$(dirname "$0")/.." && pwd)/src/autopyfactory/web/static/vendor"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
npm pack --silent "uplot@$UPLOT" "htmx.org@$HTMX" >/dev/null   # tarballs only, no node_modules
for f in *.tgz; do mkdir "${f%.tgz}"; tar xzf "$f" -C "${f%.tgz}"; done
mkdir -p "$DEST"
cp "uplot-$UPLOT/package/dist/uPlot.iife.min.js" "uplot-$UPLOT/package/dist/uPlot.min.css" "$DEST/"
cp "uplot-$UPLOT/package/LICENSE" "$DEST/LICENSE.uplot"
cp "htmx.org-$HTMX/package/dist/htmx.min.js" "$DEST/"
cp "htmx.org-$HTMX/package/LICENSE" "$DEST/LICENSE.htmx"
cd "$DEST"
printf 'uplot %s\nhtmx.org %s\n' "$UPLOT" "$HTMX" > VERSIONS
sha256sum uPlot.iife.min.js uPlot.min.css htmx.min.js > SHA256SUMS
ls -l "$DEST"
