#!/usr/bin/env bash
# Builds the single self-contained binary dist/tandem (Bun runtime included) with
# `bun build --compile`, then checks that it runs. packaging/deb.sh packs it into a .deb; or copy it
# to each node as /usr/bin/tandem with packaging/tandem.service.
# The options and why are in packaging/build.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x node_modules/.bin/bun ] || ./packaging/setup.sh
mkdir -p dist
node_modules/.bin/bun packaging/build.ts
./dist/tandem --version >/dev/null
echo "built dist/tandem ($(du -h dist/tandem | cut -f1), version $(./dist/tandem --version))"
