#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool): GPU parity tests and benches of binaries built on
# the development machine (no Rust toolchain there), plus the torch.matmul baseline, in one run.
#
# Prepare (development machine, repo root):
#   benches/gpu/pack.sh             # release binaries, stripped, into .dev/bin.tar.xz
#                                 # (and the Vulkan loader .debs into .gl/ when missing)
# Run (device): carry .gl, .dev/bin.tar.xz and .dev/manifest_dir; command
#   `bash benches/gpu/run.sh 2>&1 | tee $OUT/all.log`. Per-test logs come back as $OUT/logs.tgz.
set -uo pipefail
OUT=${OUT:-/tmp/gpuopt-out}
LOG=/tmp/gpuopt-logs
mkdir -p "$OUT" "$LOG"
t0=$(date +%s)
stamp() { echo "-- $(($(date +%s) - t0)) s: $*"; }
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && ! ls /usr/share/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
# The test binaries find data and the CLI binary through the build machine's CARGO_MANIFEST_DIR.
root=$(cat .dev/manifest_dir)
if [ "$PWD" != "$root" ]; then mkdir -p "$(dirname "$root")"; ln -sfn "$PWD" "$root"; fi
BIN=/tmp/gpuopt-bin
mkdir -p $BIN target/release && tar -xJf .dev/bin.tar.xz -C $BIN && cp $BIN/gpuopt target/release/gpuopt
nvidia-smi -L
export RUST_LOG=${RUST_LOG:-warn}
$BIN/gpuopt info 2>&1 | tee "$LOG/info.txt"
status=0
stamp "tests (GPU parity)"
for t in $BIN/tests/${TESTS:-*}; do
    name=$(basename "$t")
    if timeout "${TEST_TIMEOUT:-60}" "$t" >"$LOG/test-$name.log" 2>&1; then
        echo "ok   $name $(grep -h '^test result' "$LOG/test-$name.log" | tail -1)"
    else
        echo "FAIL $name (rc $?)"; grep -hE -A3 '^(test .* FAILED|thread .* panicked)' "$LOG/test-$name.log" | cut -c1-300 | head -24
        status=1
        # One test at a time: tells a real failure from one that only shows under concurrency.
        if timeout 45 "$t" --test-threads=1 >"$LOG/test-$name-serial.log" 2>&1; then
            echo "     serial rerun: ok"
        else
            echo "     serial rerun: FAIL"; grep -hE -A3 'panicked' "$LOG/test-$name-serial.log" | cut -c1-300 | head -8
        fi
    fi
done
dmesg 2>/dev/null | grep -iE "xid|nvrm" | tail -5
stamp "gpuopt parity (the binary's own check, both tables)"
timeout 60 $BIN/gpuopt parity 2>&1 | tee "$LOG/parity.txt" | grep -E "FAIL|^kernel|^gpuopt" ; [ "${PIPESTATUS[0]}" = 0 ] || status=1
stamp "torch baseline"
timeout 60 python3 benches/gpu/torch_matmul.py 2>&1 | tee "$LOG/torch.txt"
stamp "gpuopt bench"
for suite in ${SUITES:-gemm ns hutchinson roots elementwise}; do
    timeout "${BENCH_TIMEOUT:-100}" $BIN/gpuopt bench --suite "$suite" 2>&1 | tee "$LOG/bench-$suite.txt" || status=1
    if [ "$suite" = ns ]; then
        stamp "ns with automatic split-K"
        GPUOPT_GEMM_SPLIT_K=auto timeout 60 $BIN/gpuopt bench --suite ns 2>&1 | tee "$LOG/bench-ns-split.txt"
    fi
    stamp "after $suite"
done
# The device tool returns at most 8 files: one archive of the logs.
tar -czf "$OUT/logs.tgz" -C /tmp gpuopt-logs
exit $status
