#!/usr/bin/env bash
# Builds the single self-contained binary dist/tandem (Bun runtime included) with
# `bun build --compile`, then checks that it runs. packaging/deb.sh packs it into a .deb; or copy it
# to each node as /usr/bin/tandem with packaging/tandem.service.
#   --minify --bytecode: the code is parsed at build time, not at every start (about 2x faster
#     `tandem --version`, docs/benchmarks.md); --bytecode needs ESM output named explicitly.
#   --no-compile-autoload-*: the binary must not read a .env or bunfig.toml from whatever directory
#     it is started in (a daemon's environment comes from its unit, nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x node_modules/.bin/bun ] || ./packaging/setup.sh
mkdir -p dist
node_modules/.bin/bun build --compile --minify --bytecode --format=esm \
  --no-compile-autoload-dotenv --no-compile-autoload-bunfig \
  --outfile dist/tandem src/cli/main.ts >/dev/null
./dist/tandem --version >/dev/null
echo "built dist/tandem ($(du -h dist/tandem | cut -f1), version $(./dist/tandem --version))"
