//! Criterion benches of the matrix kernels: GEMM beside the same-run WGSL FMA-throughput kernel and
//! the CPU's sgemm (ndarray), the Gram half-product beside the full X·Xᵀ, and NS5 beside 15 GEMMs of
//! its update's size. `gpuopt bench --suite gemm|ns` prints the same comparisons as a table or JSON.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gpuopt::bench::gpu_time;
use gpuopt::kernels::gemm::{FmaPeak, GemmDesc, GemmPlan};
use gpuopt::kernels::newton_schulz::{Ns5Plan, NS5_COEFFICIENTS};
use gpuopt::parity::TestRng;
use gpuopt::{Context, Tensor};

fn context() -> Context {
    Context::new().unwrap_or_else(|e| panic!("benches need a GPU adapter: {e}"))
}

fn gemm(c: &mut Criterion) {
    let ctx = context();
    eprintln!("adapter: {}", ctx.info().name);
    let fma = FmaPeak::new(&ctx, 256, 2048).unwrap();
    let mut g = c.benchmark_group("fma_peak");
    g.sample_size(10).throughput(Throughput::Elements(fma.flops as u64));
    g.bench_function("wgsl_fma", |b| b.iter_custom(|it| gpu_time(&ctx, it, |e| fma.record(&ctx, e))));
    g.finish();
    let mut rng = TestRng::new(1);
    for n in [256usize, 512] {
        let mut g = c.benchmark_group(format!("gemm_{n}"));
        g.sample_size(10).throughput(Throughput::Elements(2 * (n * n * n) as u64));
        let a = Tensor::from_slice(&ctx, &rng.uniforms(n * n, 1.0), &[n, n]).unwrap();
        let b = Tensor::from_slice(&ctx, &rng.uniforms(n * n, 1.0), &[n, n]).unwrap();
        let out = Tensor::zeros(&ctx, &[n, n]).unwrap();
        let full = GemmPlan::new(&ctx, GemmDesc::new(n, n, n), &a, &b, &out).unwrap();
        let gram = GemmPlan::new(&ctx, GemmDesc::gram(n, n), &a, &a, &out).unwrap();
        g.bench_function("wgsl_gemm", |bn| {
            bn.iter_custom(|it| {
                gpu_time(&ctx, it, |e| {
                    full.record(e);
                })
            })
        });
        g.bench_function("wgsl_gram_half", |bn| {
            bn.iter_custom(|it| {
                gpu_time(&ctx, it, |e| {
                    gram.record(e);
                })
            })
        });
        let ca = ndarray::Array2::<f32>::from_shape_vec((n, n), rng.uniforms(n * n, 1.0)).unwrap();
        let cb = ndarray::Array2::<f32>::from_shape_vec((n, n), rng.uniforms(n * n, 1.0)).unwrap();
        g.bench_function("cpu_sgemm_ndarray", |bn| bn.iter(|| ca.dot(&cb)));
        g.finish();
    }
}

fn ns5(c: &mut Criterion) {
    let ctx = context();
    let n = 256;
    let mut rng = TestRng::new(2);
    let mut g = c.benchmark_group(format!("ns5_{n}x{n}"));
    g.sample_size(10);
    let x = Tensor::from_slice(&ctx, &rng.uniforms(n * n, 1.0), &[n, n]).unwrap();
    let plan = Ns5Plan::new(&ctx, &x, 5, NS5_COEFFICIENTS).unwrap();
    g.bench_function("newton_schulz5", |b| {
        b.iter_custom(|it| {
            gpu_time(&ctx, it, |e| {
                plan.record(e);
            })
        })
    });
    let out = Tensor::zeros(&ctx, &[n, n]).unwrap();
    let one = GemmPlan::new(&ctx, GemmDesc::new(n, n, n), &x, &x, &out).unwrap();
    g.bench_function("15_gemms", |b| {
        b.iter_custom(|it| {
            gpu_time(&ctx, it, |e| {
                for _ in 0..15 {
                    one.record(e);
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, gemm, ns5);
criterion_main!(benches);
