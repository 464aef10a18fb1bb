#!/usr/bin/env bash
# Prints Tandem's version, usable as a Debian package version too: X.Y.Z at a
# tag vX.Y.Z; otherwise the last tag's version (0.0.0 before the first)
# followed by +git<commit time, UTC>.<commit>, and .dirty for a modified
# tree. Outside a git checkout: 0.0.0+unknown.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo 0.0.0+unknown
  exit 0
fi
dirty=""
git diff --quiet HEAD 2>/dev/null || dirty=".dirty"
if tag="$(git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null)" && [ -z "$dirty" ]; then
  echo "${tag#v}"
  exit 0
fi
base="$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null || echo v0.0.0)"
when="$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S)"
echo "${base#v}+git${when}.$(git rev-parse --short=12 HEAD)${dirty}"
