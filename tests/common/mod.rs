//! Shared test helpers. GPU tests never skip: without an adapter they fail and say how to get one.
#![allow(dead_code)]

use gpuopt::{Context, ContextOptions};

/// The test binary's shared default context (one device per process, as an application holds one),
/// or a panic that names the fix. Creating a device per check made the NVIDIA driver refuse new ones
/// after some dozens in one process ("Parent device is lost", seen on an H200).
pub fn ctx() -> Context {
    static SHARED: std::sync::OnceLock<Context> = std::sync::OnceLock::new();
    SHARED.get_or_init(own_ctx).clone()
}

/// A context of its own (for tests that count what it compiled).
pub fn own_ctx() -> Context {
    ctx_with(ContextOptions::default())
}

/// A context with options (grid / binding caps), or a panic that names the fix.
pub fn ctx_with(opts: ContextOptions) -> Context {
    match Context::with_options(opts) {
        Ok(c) => c,
        Err(e) => panic!(
            "GPU tests need a GPU adapter and none could be opened: {e}\n\
             On Linux without a GPU: `apt-get install mesa-vulkan-drivers` (lavapipe), then rerun."
        ),
    }
}

/// Module `name` composed, parsed and validated with naga: no optional capability, except subgroup
/// operations for the modules that declare them (`shaders::SUBGROUP_MODULES`), so any other optional
/// feature fails validation here.
pub fn naga_module(name: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};
    let src = gpuopt::shaders::composed(name).unwrap();
    let module =
        naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("shader {name}: {}", e.emit_to_string(&src)));
    let mut validator = if gpuopt::shaders::needs_subgroups(name) {
        let mut v = Validator::new(ValidationFlags::all(), Capabilities::SUBGROUP);
        v.subgroup_stages(ShaderStages::COMPUTE).subgroup_operations(SubgroupOperationSet::all());
        v
    } else {
        Validator::new(ValidationFlags::all(), Capabilities::empty())
    };
    let info = validator.validate(&module).unwrap_or_else(|e| panic!("shader {name}: {}", e.emit_to_string(&src)));
    (module, info)
}

/// Relative Frobenius (2-norm) difference ‖x − y‖/‖y‖ of an f32 result from an f64 reference.
pub fn rel(x: &[f32], y: &[f64]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
    let den: f64 = y.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

/// [`rel`] against an f32 reference.
pub fn rel32(x: &[f32], y: &[f32]) -> f64 {
    rel(x, &y.iter().map(|&v| v as f64).collect::<Vec<_>>())
}

/// Writes `grads[i]` as parameter `ids[i]`'s gradient into both optimizers (a GPU one and its CPU
/// twin, say) and steps each once.
pub fn step_both(
    a: &mut dyn gpuopt::optim::Stepper,
    b: &mut dyn gpuopt::optim::Stepper,
    ids: &[gpuopt::optim::ParamId],
    grads: &[Vec<f32>],
) {
    for (&id, g) in ids.iter().zip(grads) {
        a.write_grad(id, g).unwrap();
        b.write_grad(id, g).unwrap();
    }
    a.step().unwrap();
    b.step().unwrap();
}

/// The NaN/Inf guard of an optimizer over parameters 0..grads.len() (`grads` finite, one per
/// parameter): after a finite step, a gradient holding NaN (in the last parameter) and then one
/// holding Inf (in the first) each skip the whole step: every parameter and every state named in
/// `states` (each must exist for some parameter) stays bit for bit, the step count stays, the skip
/// is reported and counted (also through a snapshot and a restore, which keeps a refused gradient
/// refused). A NaN gradient rewritten with a finite one before the step does not skip it; a finite
/// step then moves the parameters.
pub fn assert_non_finite_skips(opt: &mut dyn gpuopt::optim::Stepper, grads: &[Vec<f32>], states: &[&str]) {
    use gpuopt::optim::ParamId;
    let ids: Vec<ParamId> = (0..grads.len()).map(ParamId).collect();
    let write_all = |opt: &mut dyn gpuopt::optim::Stepper| {
        for (&id, g) in ids.iter().zip(grads) {
            opt.write_grad(id, g).unwrap();
        }
    };
    let with = |which: usize, bad: f32| {
        let mut g = grads[which].clone();
        let mid = g.len() / 2;
        g[mid] = bad;
        g
    };
    write_all(opt);
    opt.step().unwrap();
    for s in states {
        assert!(ids.iter().any(|&id| opt.read_state(id, s).is_ok()), "no parameter has a state {s:?}");
    }
    // Every value as bits (NaN == NaN, -0 != 0).
    let everything = |opt: &mut dyn gpuopt::optim::Stepper| -> Vec<Vec<u32>> {
        let mut all = Vec::new();
        for &id in &ids {
            all.push(opt.read_param(id).unwrap());
            all.extend(states.iter().filter_map(|s| opt.read_state(id, s).ok()));
        }
        all.into_iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect()
    };
    let before = everything(opt);
    let t = opt.step_count().unwrap();
    for (k, (which, bad)) in [(grads.len() - 1, f32::NAN), (0, f32::INFINITY)].into_iter().enumerate() {
        write_all(opt);
        opt.write_grad(ids[which], &with(which, bad)).unwrap();
        opt.step().unwrap();
        assert!(opt.found_non_finite().unwrap(), "{bad} in parameter {which}: not reported");
        assert_eq!(opt.skipped_steps().unwrap(), k as u64 + 1);
        assert_eq!(opt.step_count().unwrap(), t, "a skipped step is not counted");
        assert!(everything(opt) == before, "{bad} in parameter {which}: a skipped step changed something");
    }
    let snap = opt.snapshot().unwrap();
    assert_eq!(snap.skipped, 2, "the skip count is kept in checkpoints");
    opt.restore(snap).unwrap();
    assert_eq!(opt.skipped_steps().unwrap(), 2, "and restored from them");
    // A gradient refused before a restore still stands after it (gradients are not checkpointed):
    // the next step is skipped rather than run on the gradient written before it.
    opt.write_grad(ids[0], &with(0, f32::NAN)).unwrap();
    let snap = opt.snapshot().unwrap();
    opt.restore(snap).unwrap();
    opt.step().unwrap();
    assert!(opt.found_non_finite().unwrap(), "a NaN written before a restore must still skip the step");
    assert!(everything(opt) == before);
    // A NaN overwritten by a finite gradient before the step: the step is taken.
    write_all(opt);
    opt.write_grad(ids[0], &with(0, f32::NAN)).unwrap();
    opt.write_grad(ids[0], &grads[0]).unwrap();
    opt.step().unwrap();
    assert!(!opt.found_non_finite().unwrap());
    assert_eq!(opt.step_count().unwrap(), t + 1);
    assert!(everything(opt) != before, "a finite step moves the parameters");
}

/// Runs the `gpuopt` binary built with the tests (`env!("CARGO_BIN_EXE_gpuopt")` is set for
/// integration tests) with `args`.
pub fn gpuopt(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gpuopt"))
        .args(args)
        // lavapipe's Mesa device-select layer prints a harmless XDG_RUNTIME_DIR line on headless machines.
        .env("NODEVICE_SELECT", "1")
        .output()
        .expect("run gpuopt")
}
