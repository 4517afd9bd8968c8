#!/usr/bin/env bash
# Builds the release binaries that benches/gpu/run.sh runs on a lent GPU machine and packs them,
# stripped and xz-compressed (they share most of their code, so one archive is small), into .dev/,
# and fetches the Vulkan loader packages into .gl/ if they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The Vulkan loader for the GPU machine, which has the NVIDIA driver but not always libvulkan
# (run.sh unpacks these .debs there). Downloaded once, for amd64 whatever this machine is.
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    apt-get $o update -qq
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
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
