//! gpuopt in one page: AdamW trains the parameters of an ill-conditioned quadratic entirely on the GPU.
//! The gradient comes from our own WGSL kernel, which reads and writes the optimizer's arenas through
//! its tensor views; each step is one submit, and the loss is read back only when printed.
//!
//! Run: `cargo run --release --example quickstart`

use gpuopt::optim::{AdamW, GroupOptions, OptimizerBuilder, Stepper};
use gpuopt::Context;

/// f(w) = ½ Σ a_i (w_i − c_i)²; ∇f = a ⊙ (w − c). Curvatures a span 1e-2..1e2.
const GRADIENT_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> c: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i < arrayLength(&grad)) {
        grad[i] = a[i] * (w[i] - c[i]);
    }
}
"#;

fn main() -> gpuopt::Result<()> {
    env_logger::init();
    let ctx = Context::new()?;
    println!("adapter: {} ({:?})", ctx.info().name, ctx.info().backend);

    let n = 50_000;
    let a: Vec<f32> = (0..n).map(|i| 10f32.powf(-2.0 + 4.0 * i as f32 / n as f32)).collect();
    let c: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let loss =
        |w: &[f32]| -> f64 { w.iter().zip(&a).zip(&c).map(|((w, a), c)| 0.5 * (*a * (w - c) * (w - c)) as f64).sum() };

    // One parameter tensor in the default group (decayed) and a bias-like one without decay.
    let mut b = OptimizerBuilder::new(AdamW { lr: 0.05, weight_decay: 1e-4, ..AdamW::default() });
    let no_decay = b.group(GroupOptions { weight_decay: Some(0.0), ..Default::default() })?;
    let w = b.param("w", &vec![0.0; n], &[n], b.default_group())?;
    let bias = b.param("bias", &[0.0; 16], &[16], no_decay)?;
    let mut opt = b.build(&ctx)?;

    // Our gradient kernel, bound to the optimizer's parameter and gradient views.
    let device = ctx.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("quadratic gradient"),
        source: wgpu::ShaderSource::Wgsl(GRADIENT_WGSL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("quadratic gradient"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let a_t = gpuopt::Tensor::from_slice(&ctx, &a, &[n])?;
    let c_t = gpuopt::Tensor::from_slice(&ctx, &c, &[n])?;
    let (wv, gv) = (opt.param_view(w)?, opt.grad_view(w)?);
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("quadratic gradient"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: wv.binding().expect("non-empty") },
            wgpu::BindGroupEntry { binding: 1, resource: a_t.buffer().as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: c_t.buffer().as_entire_binding() },
            wgpu::BindGroupEntry { binding: 3, resource: gv.binding().expect("non-empty") },
        ],
    });
    opt.write_grad(bias, &[0.0; 16])?;

    println!("step {:>4}  loss {:.6e}", 0, loss(&opt.read_param(w)?));
    for step in 1..=300 {
        let mut enc = ctx.encoder("gradient");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups((n as u32).div_ceil(256), 1, 1);
        }
        ctx.submit(enc);
        opt.set_lr(gpuopt::optim::GroupId(0), 0.05 * 0.99f64.powi(step))?; // a schedule: only the uniform changes
        opt.step()?;
        if step % 50 == 0 {
            println!("step {step:>4}  loss {:.6e}", loss(&opt.read_param(w)?));
        }
    }
    Ok(())
}
