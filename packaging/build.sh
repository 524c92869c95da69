#!/usr/bin/env bash
# Builds the single self-contained binary dist/tandem (Bun runtime included) with
# `bun build --compile`, then checks that it runs. Copy it to each node as /usr/local/bin/tandem.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x node_modules/.bin/bun ] || ./packaging/setup.sh
node_modules/.bin/bun build --compile --minify-syntax --outfile dist/tandem src/cli/main.ts
./dist/tandem --version >/dev/null
echo "built dist/tandem ($(du -h dist/tandem | cut -f1), version $(./dist/tandem --version))"
