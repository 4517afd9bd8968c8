"""The `torch.matmul` baseline of issue 3's GPU goal: f32 square products with TF32 off.

Run on the machine whose GPU gpuopt's `bench --suite gemm` measured, in the same session, so the two
figures share a card (benches/gpu/run.sh does both). Prints one line per size:
`torch_matmul_f32 n=<n> median_ms=<t> gflops=<g>`. Times with CUDA events: 5 warm-ups, 20 timed
products, the median; inputs are uniform in [-1, 1) (never zeros, which can run faster).
"""
import sys

import torch


def main() -> int:
    if not torch.cuda.is_available():
        print("torch_matmul: no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for n in [256, 512, 1024, 2048, 4096]:
        a = torch.rand(n, n, device="cuda") * 2 - 1
        b = torch.rand(n, n, device="cuda") * 2 - 1
        for _ in range(5):
            torch.matmul(a, b)
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        times.sort()
        ms = times[len(times) // 2]
        print(f"torch_matmul_f32 n={n} median_ms={ms:.4f} gflops={2 * n**3 / ms / 1e6:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
