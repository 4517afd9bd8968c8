//! Criterion benches of the fused elementwise updates. Each group times the update beside gpuopt's
//! vec4 copy kernel moving the same bytes (the bandwidth limit, measured in the same run), so the
//! report reads as a fraction of the limit; plus the multi-tensor arena beside one flat tensor and the
//! CPU reference for contrast. `gpuopt bench` prints the same comparisons as a table or JSON.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gpuopt::bench::{flat_shapes, gpt2_shapes, gpu_time, optimizer_with_grads, CopyKernel};
use gpuopt::optim::{Algorithm, OptimizerBuilder, Stepper};
use gpuopt::Context;

fn context() -> Context {
    Context::new().unwrap_or_else(|e| panic!("benches need a GPU adapter: {e}"))
}

fn elementwise(c: &mut Criterion) {
    let ctx = context();
    eprintln!("adapter: {}", ctx.info().name);
    for n in [1usize << 20, 1 << 24] {
        for name in ["lion", "signum", "adamw"] {
            let alg = Algorithm::from_name(name, &serde_json::json!({})).unwrap();
            let bytes = alg.bytes_per_param() * n;
            let mut g = c.benchmark_group(format!("{name}_{n}"));
            g.sample_size(10).throughput(Throughput::Bytes(bytes as u64));
            let copy = CopyKernel::new(&ctx, bytes / 8).unwrap();
            g.bench_function("copy_same_bytes", |b| b.iter_custom(|it| gpu_time(&ctx, it, |e| copy.record(&ctx, e))));
            drop(copy);
            let opt = optimizer_with_grads(&ctx, &alg, &[vec![n]]).unwrap();
            g.bench_function("fused_update", |b| {
                b.iter_custom(|it| {
                    gpu_time(&ctx, it, |e| {
                        opt.record_update(e);
                    })
                })
            });
            if n == 1 << 20 {
                let mut bld = OptimizerBuilder::new(alg.clone());
                let id = bld.param("p", &vec![0.5; n], &[n], bld.default_group()).unwrap();
                let mut cpu = bld.build_cpu().unwrap();
                cpu.write_grad(id, &vec![0.01; n]).unwrap();
                g.bench_function("cpu_reference", |b| b.iter(|| cpu.step().unwrap()));
            }
            g.finish();
        }
    }
}

fn multi_tensor(c: &mut Criterion) {
    let ctx = context();
    let shapes = gpt2_shapes(192, 50257 / 4);
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    for name in ["adamw", "lion"] {
        let alg = Algorithm::from_name(name, &serde_json::json!({})).unwrap();
        let mut g = c.benchmark_group(format!("multi_tensor_{name}"));
        g.sample_size(10).throughput(Throughput::Bytes((alg.bytes_per_param() * total) as u64));
        let flat = optimizer_with_grads(&ctx, &alg, &flat_shapes(&ctx, total)).unwrap();
        g.bench_function("flat", |b| {
            b.iter_custom(|it| {
                gpu_time(&ctx, it, |e| {
                    flat.record_update(e);
                })
            })
        });
        drop(flat);
        let many = optimizer_with_grads(&ctx, &alg, &shapes).unwrap();
        g.bench_function(format!("gpt2_shapes_{}_tensors", shapes.len()), |b| {
            b.iter_custom(|it| {
                gpu_time(&ctx, it, |e| {
                    many.record_update(e);
                })
            })
        });
        g.finish();
    }
}

criterion_group!(benches, elementwise, multi_tensor);
criterion_main!(benches);
