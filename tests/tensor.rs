//! Context and Tensor basics: adapter info, limits requested from the adapter, round trips, zero size.

mod common;

use gpuopt::{Error, Tensor};
use ndarray::{ArrayD, IxDyn};

#[test]
fn context_reports_adapter_and_its_own_limits() {
    let ctx = common::ctx();
    let info = ctx.info();
    assert!(!info.name.is_empty());
    // The device was opened with the adapter's limits, which are at least WebGPU's downlevel defaults.
    let d = wgpu::Limits::downlevel_defaults();
    assert!(info.limits.max_storage_buffer_binding_size >= d.max_storage_buffer_binding_size);
    assert!(info.limits.max_compute_workgroups_per_dimension >= d.max_compute_workgroups_per_dimension);
    assert_eq!(ctx.device().limits().max_storage_buffer_binding_size, info.limits.max_storage_buffer_binding_size);
    assert!(info.to_string().contains(&info.name));
}

#[test]
fn tensor_round_trips_slices_and_arrays() {
    let ctx = common::ctx();
    let a = ArrayD::from_shape_fn(IxDyn(&[3, 5, 7]), |ix| (ix[0] * 100 + ix[1] * 10 + ix[2]) as f32 - 0.5);
    let t = Tensor::from_array(&ctx, a.view()).unwrap();
    assert_eq!(t.shape(), &[3, 5, 7]);
    assert_eq!(t.to_array(&ctx).unwrap(), a);
    let v: Vec<f32> = (0..7).map(|i| i as f32 * 1e30).collect();
    let t = Tensor::from_slice(&ctx, &v, &[7]).unwrap();
    assert_eq!(t.to_vec(&ctx).unwrap(), v);
    t.write(&ctx, &[1.0; 7]).unwrap();
    assert_eq!(t.to_vec(&ctx).unwrap(), vec![1.0; 7]);
    assert!(matches!(t.write(&ctx, &[1.0; 6]), Err(Error::Shape { .. })));
    assert!(matches!(Tensor::from_slice(&ctx, &v, &[2, 3]), Err(Error::Shape { .. })));
}

#[test]
fn tensor_of_zero_size_works() {
    let ctx = common::ctx();
    let t = Tensor::from_slice(&ctx, &[], &[0, 4]).unwrap();
    assert!(t.is_empty());
    assert_eq!(t.to_vec(&ctx).unwrap(), Vec::<f32>::new());
    assert_eq!(t.to_array(&ctx).unwrap().shape(), &[0, 4]);
}

#[test]
fn tensor_over_the_binding_limit_is_refused() {
    let ctx = common::ctx_with(gpuopt::ContextOptions { max_binding_bytes: Some(1024), ..Default::default() });
    match Tensor::zeros(&ctx, &[1000]) {
        Err(e @ Error::TooLarge { .. }) => {
            assert!(e.to_string().contains("max_storage_buffer_binding_size"))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn optimizer_accepts_zero_size_parameters() {
    use gpuopt::optim::{AdamW, OptimizerBuilder, Stepper};
    let ctx = common::ctx();
    let mut b = OptimizerBuilder::new(AdamW::default());
    let e = b.param("empty", &[], &[0], b.default_group()).unwrap();
    let mut only_empty = b.clone().build(&ctx).unwrap();
    only_empty.step().unwrap();
    assert_eq!(only_empty.read_param(e).unwrap(), Vec::<f32>::new());
    let w = b.param("w", &[1.0; 3], &[3], b.default_group()).unwrap();
    let mut opt = b.build(&ctx).unwrap();
    opt.write_grad(e, &[]).unwrap();
    opt.write_grad(w, &[1.0; 3]).unwrap();
    opt.step().unwrap();
    assert!(opt.read_param(w).unwrap().iter().all(|&x| x < 1.0));
}
