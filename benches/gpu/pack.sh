#!/usr/bin/env bash
# Builds the release binaries that benches/gpu/run.sh runs on a lent GPU machine and packs them,
# stripped and xz-compressed (they share most of their code, so one archive is small), into .dev/.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin gpuopt
cargo test --release --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]:
        print(m["target"]["name"], m["executable"])' >.dev.list.tmp
rm -rf .dev/stage && mkdir -p .dev/stage/tests
strip -o .dev/stage/gpuopt target/release/gpuopt
while read -r name exe; do strip -o ".dev/stage/tests/$name" "$exe"; done <.dev.list.tmp
rm .dev.list.tmp
pwd >.dev/manifest_dir
tar -C .dev/stage -cf - . | xz -T2 -9e --lzma2=dict=64MiB >.dev/bin.tar.xz
rm -rf .dev/stage
ls -la .dev/bin.tar.xz
