//! Checkpoints: a resumed run continues bit-identically; corrupt or mismatched files are errors that
//! leave the optimizer as it was; files are replaced atomically.

mod common;

use gpuopt::optim::{AdEMAMix, AdamW, Algorithm, GroupOptions, Mars, OptimizerBuilder, ParamId, Stepper};
use gpuopt::parity::TestRng;
use gpuopt::Error;

fn builder(alg: Algorithm, seed: u64) -> (OptimizerBuilder, Vec<ParamId>, Vec<usize>) {
    let sizes = vec![5, 1000, 4099];
    let mut rng = TestRng::new(seed);
    let mut b = OptimizerBuilder::new(alg);
    let other = b.group(GroupOptions { lr: Some(1e-3), weight_decay: Some(0.0) }).unwrap();
    let ids = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let g = if i == 1 { other } else { b.default_group() };
            b.param(&format!("layer{i}.w"), &rng.uniforms(n, 1.0), &[n], g).unwrap()
        })
        .collect();
    (b, ids, sizes)
}

fn feed(opt: &mut dyn Stepper, ids: &[ParamId], sizes: &[usize], rng: &mut TestRng, steps: usize) {
    for _ in 0..steps {
        let t = opt.step_count().unwrap();
        for (&id, &n) in ids.iter().zip(sizes) {
            opt.write_grad(id, &rng.uniforms(n, 1.0)).unwrap();
        }
        opt.set_lr(gpuopt::optim::GroupId(0), 2e-3 / (1.0 + t as f64)).unwrap();
        opt.step().unwrap();
    }
}

fn resume_is_bit_identical(alg: Algorithm) {
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");

    // Uninterrupted: 20 steps.
    let (b, ids, sizes) = builder(alg.clone(), 1);
    let mut straight = b.build(&ctx).unwrap();
    let mut rng = TestRng::new(77);
    feed(&mut straight, &ids, &sizes, &mut rng, 20);

    // Interrupted after 10, saved, restored into a fresh optimizer (other initial values), 10 more.
    let (b, ids, sizes) = builder(alg.clone(), 1);
    let mut first = b.build(&ctx).unwrap();
    let mut rng = TestRng::new(77);
    feed(&mut first, &ids, &sizes, &mut rng, 10);
    first.save(&path).unwrap();
    drop(first);
    let (b, ids, sizes) = builder(alg, 2);
    let mut resumed = b.build(&ctx).unwrap();
    resumed.load(&path).unwrap();
    assert_eq!(resumed.step_count().unwrap(), 10);
    feed(&mut resumed, &ids, &sizes, &mut rng, 10);

    for &id in &ids {
        assert_eq!(straight.read_param(id).unwrap(), resumed.read_param(id).unwrap());
    }
    assert_eq!(straight.snapshot().unwrap(), resumed.snapshot().unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
}

#[test]
fn checkpoint_resume_is_bit_identical_adamw() {
    resume_is_bit_identical(AdamW { amsgrad: true, ..AdamW::default() }.into());
}

#[test]
fn checkpoint_resume_is_bit_identical_ademamix() {
    resume_is_bit_identical(AdEMAMix { t_alpha_beta3: 15.0, ..AdEMAMix::default() }.into());
}

#[test]
fn checkpoint_resume_is_bit_identical_mars() {
    resume_is_bit_identical(Mars::default().into());
}

#[test]
fn checkpoint_moves_between_gpu_and_cpu() {
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let (b, ids, sizes) = builder(AdamW::default().into(), 3);
    let mut cpu = b.clone().build_cpu().unwrap();
    feed(&mut cpu, &ids, &sizes, &mut TestRng::new(1), 4);
    cpu.save(&path).unwrap();
    let mut gpu = b.build(&ctx).unwrap();
    gpu.load(&path).unwrap();
    assert_eq!(gpu.snapshot().unwrap(), cpu.snapshot().unwrap());
}

#[test]
fn checkpoint_corrupt_or_mismatched_is_an_error_and_changes_nothing() {
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let (b, ids, sizes) = builder(AdamW::default().into(), 4);
    let mut opt = b.clone().build(&ctx).unwrap();
    feed(&mut opt, &ids, &sizes, &mut TestRng::new(2), 3);
    opt.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();

    let mut victim = b.build(&ctx).unwrap();
    feed(&mut victim, &ids, &sizes, &mut TestRng::new(3), 2);
    let before = victim.snapshot().unwrap();

    let try_load = |victim: &mut gpuopt::optim::Optimizer, bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        let r = victim.load(&path);
        assert!(matches!(r, Err(Error::Checkpoint { .. })), "{r:?}");
    };
    // A flipped byte in the tensor data (the checksum catches it).
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n - 10] ^= 0x40;
    try_load(&mut victim, &flipped);
    // Truncated.
    try_load(&mut victim, &good[..good.len() / 2]);
    // Not a checkpoint at all.
    try_load(&mut victim, b"hello");
    assert_eq!(victim.snapshot().unwrap(), before, "failed loads change nothing");

    // Mismatches: another optimizer, other shapes.
    std::fs::write(&path, &good).unwrap();
    let (b2, _, _) = builder(gpuopt::optim::Lion::default().into(), 4);
    assert!(matches!(b2.build(&ctx).unwrap().load(&path), Err(Error::Checkpoint { .. })));
    let mut b3 = OptimizerBuilder::new(AdamW::default());
    b3.param("layer0.w", &[0.0; 6], &[6], b3.default_group()).unwrap();
    assert!(matches!(b3.build(&ctx).unwrap().load(&path), Err(Error::Checkpoint { .. })));
    // Missing file.
    assert!(matches!(victim.load(&dir.path().join("nope")), Err(Error::Io { .. })));
}

/// A checkpoint whose hyperparameters need another update kernel than the one the optimizer was built
/// with (same state tensors) is refused rather than run with the old kernel, on GPU and CPU alike.
#[test]
fn checkpoint_selecting_another_update_kernel_is_refused() {
    use gpuopt::optim::{AdaHessian, KMap, Lion, Sophia, SophiaVariant};
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.safetensors");
    let pairs: [(Algorithm, Algorithm); 3] = [
        (Lion::default().into(), Lion { k_map: KMap::L2, ..Lion::default() }.into()),
        (Sophia::default().into(), Sophia { variant: SophiaVariant::Sophiah, ..Sophia::default() }.into()),
        (AdaHessian::default().into(), AdaHessian { hessian_power: 0.5, ..AdaHessian::default() }.into()),
    ];
    for (saved, built) in pairs {
        let (b, _, _) = builder(saved.clone(), 4);
        b.build(&ctx).unwrap().save(&path).unwrap();
        let (b2, _, _) = builder(built.clone(), 5);
        let mut gpu = b2.clone().build(&ctx).unwrap();
        let before = gpu.snapshot().unwrap();
        let r = gpu.load(&path);
        assert!(matches!(r, Err(Error::Checkpoint { .. })), "{} into {:?}: {r:?}", saved.name(), built);
        assert_eq!(gpu.snapshot().unwrap(), before);
        assert!(b2.build_cpu().unwrap().load(&path).is_err());
        // The same hyperparameters load.
        let (b3, _, _) = builder(saved, 6);
        b3.build(&ctx).unwrap().load(&path).unwrap();
    }
}

/// Resume of the matrix optimizers: `make(seed)` builds the GPU optimizer (and, with `cpu`, the CPU
/// reference) over the same parameters.
fn matrix_resume(make: &dyn Fn(u64, bool) -> Box<dyn Stepper>, shapes: &[Vec<usize>]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let ids: Vec<ParamId> = (0..shapes.len()).map(ParamId).collect();
    let feed = |opt: &mut dyn Stepper, rng: &mut TestRng, steps: usize| {
        for _ in 0..steps {
            for (&id, s) in ids.iter().zip(shapes) {
                opt.write_grad(id, &rng.uniforms(s.iter().product(), 1.0)).unwrap();
            }
            opt.step().unwrap();
        }
    };
    let mut straight = make(1, false);
    feed(straight.as_mut(), &mut TestRng::new(5), 6);
    let mut first = make(1, false);
    let mut rng = TestRng::new(5);
    feed(first.as_mut(), &mut rng, 3);
    first.save(&path).unwrap();
    let mut resumed = make(2, false);
    resumed.load(&path).unwrap();
    feed(resumed.as_mut(), &mut rng, 3);
    for &id in &ids {
        assert_eq!(straight.read_param(id).unwrap(), resumed.read_param(id).unwrap());
    }
    let mut cpu = make(2, true);
    cpu.load(&path).unwrap();
    assert_eq!(first.snapshot().unwrap(), cpu.snapshot().unwrap());
}

#[test]
fn checkpoint_resume_is_bit_identical_auon_and_reg() {
    use gpuopt::optim::{AuonBuilder, AuonConfig, RegBuilder, RegConfig};
    let ctx = common::ctx();
    // Second [8, 5] and [7]: restore writes into stacks at index 1 too.
    let shapes: Vec<Vec<usize>> = vec![vec![8, 5], vec![7], vec![0], vec![3, 2, 2], vec![8, 5], vec![7]];
    let init = |seed: u64| -> Vec<Vec<f32>> {
        let mut rng = TestRng::new(seed);
        shapes.iter().map(|s| rng.uniforms(s.iter().product(), 0.5)).collect()
    };
    for hybrid in [false, true] {
        let make = |seed: u64, cpu: bool| -> Box<dyn Stepper> {
            let mut b = AuonBuilder::new(AuonConfig { lr: 0.05, weight_decay: 0.1, ..AuonConfig::default() }, hybrid);
            for (i, (s, d)) in shapes.iter().zip(init(seed)).enumerate() {
                b.param(&format!("p{i}"), &d, s).unwrap();
            }
            if cpu {
                Box::new(b.build_cpu().unwrap())
            } else {
                Box::new(b.build(&ctx).unwrap())
            }
        };
        matrix_resume(&make, &shapes);
    }
    let make = |seed: u64, cpu: bool| -> Box<dyn Stepper> {
        let mut b = RegBuilder::new(RegConfig { lr: 0.01, weight_decay: 0.1, ..RegConfig::default() });
        for (i, (s, d)) in shapes.iter().zip(init(seed)).enumerate() {
            b.param(&format!("p{i}"), &d, s).unwrap();
        }
        if cpu {
            Box::new(b.build_cpu().unwrap())
        } else {
            Box::new(b.build(&ctx).unwrap())
        }
    };
    matrix_resume(&make, &shapes);
}
