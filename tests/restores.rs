//! Checkpoints and restores, every optimizer family:
//! 1. a checkpoint taken under hyperparameters X restored into an optimizer built with other ones (Y)
//!    continues exactly as a straight run under X (bit for bit on one backend); a check that Y's
//!    values would have changed the continuation keeps each case honest;
//! 2. GPU checkpoints load on the CPU twin and back, and both continue alike (parity tolerances);
//! 3. lr / weight-decay changes before a save and after a restore, skip counts and NaN marks;
//! 4. refused restores (other optimizer, other shapes, bad states or hyperparameters, corrupt files)
//!    change nothing: the snapshot stays, and the next steps equal an untouched twin's.

mod common;

use gpuopt::kernels::roots::GpuMats;
use gpuopt::optim::distributed_lion::{Aggregation, DistributedLion, DistributedLionConfig};
use gpuopt::optim::{
    AdEMAMix, AdaBound, AdaHessian, AdaMomentum, AdamW, Algorithm, Ano, AsgoConfig, AuonBuilder, AuonConfig,
    AuonVariant, Dasgo, DasgoConfig, FlatAlgorithm, FlatOptimizer, Graft, GroupId, GroupOptions, KMap, Lion, Mars,
    MarsVariant, MuonBuilder, MuonConfig, OasisConfig, OptimizerBuilder, ParamId, ParamMeta, RegBuilder, RegConfig,
    SaniaConfig, SaniaPreconditioner, SaniaVariant, Sgd, Shampoo, ShampooConfig, SignSgd, Signum, Snapshot, Sophia,
    SophiaVariant, Stepper,
};
use gpuopt::optim::{AdjustLr, Asgo};
use gpuopt::parity::TestRng;
use gpuopt::reference::roots::CpuMats;
use gpuopt::roots::MatOps;
use gpuopt::{Error, Result};
use serde_json::Value;
use std::fmt::Debug;
use std::ops::Range;

/// A change made to an optimizer between steps (an lr schedule, a NaN gradient).
type Tweak<'a> = &'a dyn Fn(&mut dyn Stepper);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Be {
    Gpu,
    Cpu,
}

const BOTH: &[Be] = &[Be::Gpu, Be::Cpu];
const GPU_ONLY: &[Be] = &[Be::Gpu];

type Opt = Box<dyn Stepper>;

thread_local! {
    /// The context GPU optimizers are built on in this test thread (default: the shared one).
    static CTX: std::cell::RefCell<Option<gpuopt::Context>> = const { std::cell::RefCell::new(None) };
}

fn gctx() -> gpuopt::Context {
    CTX.with(|c| c.borrow().clone()).unwrap_or_else(common::ctx)
}

/// Runs `f` with GPU optimizers built on `ctx` (None: the shared default context).
fn on_ctx<T>(ctx: Option<&gpuopt::Context>, f: impl FnOnce() -> T) -> T {
    let old = CTX.with(|c| c.replace(ctx.cloned()));
    let r = f();
    CTX.with(|c| *c.borrow_mut() = old);
    r
}

/// One optimizer family: how to build it under a config on a backend, and what one step's inputs are.
struct Fam<'a, C> {
    name: &'a str,
    make: &'a dyn Fn(&C, Be) -> Opt,
    /// Writes step k's gradients (and Hessian diagonals / loss); does not step.
    feed: &'a dyn Fn(&mut dyn Stepper, usize),
    /// GPU vs CPU: largest relative (Frobenius) difference of a parameter after the continuation.
    tol: f64,
    backends: &'a [Be],
    /// Whether a NaN gradient is accepted and skips the step (false: refused at write).
    skips: bool,
}

/// Step k's gradient of parameter i (n elements), deterministic.
fn gvec(k: usize, i: usize, n: usize) -> Vec<f32> {
    TestRng::new(7919 * (k as u64 + 1) + 31 * i as u64 + 5).uniforms(n, 1.0)
}

fn run<C>(f: &Fam<C>, opt: &mut dyn Stepper, steps: Range<usize>) {
    for k in steps {
        (f.feed)(opt, k);
        opt.step().unwrap_or_else(|e| panic!("{}: step {k}: {e}", f.name));
    }
}

/// Step k's inputs with a NaN in parameter 0's gradient.
fn poison<C>(f: &Fam<C>, opt: &mut dyn Stepper, k: usize) {
    (f.feed)(opt, k);
    let n = opt.params()[0].len();
    let mut g = vec![0.1; n];
    g[n / 2] = f32::NAN;
    opt.write_grad(ParamId(0), &g).unwrap();
}

/// 0..a with one skipped (NaN) step after the first.
fn history<C>(f: &Fam<C>, opt: &mut dyn Stepper, a: usize) {
    run(f, opt, 0..1);
    poison(f, opt, 500);
    opt.step().unwrap();
    assert!(opt.found_non_finite().unwrap(), "{}: the NaN step was not skipped", f.name);
    run(f, opt, 1..a);
}

fn nan_inf(x: f64) -> f64 {
    if x.is_nan() {
        f64::INFINITY
    } else {
        x
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| if x.to_bits() == y.to_bits() { 0.0 } else { nan_inf((*x as f64 - *y as f64).abs()) })
        .fold(0.0, f64::max)
}

/// Largest relative (Frobenius) difference over the parameters.
fn max_rel(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| if x.len() != y.len() { f64::INFINITY } else { nan_inf(common::rel32(x, y)) })
        .fold(0.0, f64::max)
}

/// What differs between two snapshots (bitwise on tensors), empty when nothing does.
fn differences(got: &Snapshot, want: &Snapshot) -> String {
    let mut out = Vec::new();
    if got.algorithm != want.algorithm {
        out.push(format!("algorithm {} vs {}", got.algorithm, want.algorithm));
    }
    if got.step != want.step {
        out.push(format!("step {} vs {}", got.step, want.step));
    }
    if got.skipped != want.skipped {
        out.push(format!("skipped {} vs {}", got.skipped, want.skipped));
    }
    if got.groups != want.groups {
        out.push(format!("groups {:?} vs {:?}", got.groups, want.groups));
    }
    if got.hyper != want.hyper {
        out.push(format!("hyper {} vs {}", got.hyper, want.hyper));
    }
    if got.params != want.params {
        out.push("params differ".into());
    }
    let v = if got.values.len() == want.values.len() {
        got.values.iter().zip(&want.values).map(|(a, b)| max_abs(a, b)).fold(0.0, f64::max)
    } else {
        f64::INFINITY
    };
    if v > 0.0 {
        out.push(format!("values: max |d| {v:e}, max rel {:e}", max_rel(&got.values, &want.values)));
    }
    if got.states.len() != want.states.len() {
        out.push("state lists differ in length".into());
    } else {
        for (i, (g, w)) in got.states.iter().zip(&want.states).enumerate() {
            for (name, gv) in g {
                match w.iter().find(|(n, _)| n == name) {
                    None => out.push(format!("state {name} of param {i} only in one")),
                    Some((_, wv)) => {
                        let d = max_abs(gv, wv);
                        if d > 0.0 {
                            out.push(format!("state {name} of param {i}: max |d| {d:e}"));
                        }
                    }
                }
            }
            if g.len() != w.len() {
                out.push(format!("param {i}: {} vs {} states", g.len(), w.len()));
            }
        }
    }
    out.join("; ")
}

#[track_caller]
fn same(what: &str, got: &Snapshot, want: &Snapshot) {
    let d = differences(got, want);
    assert!(d.is_empty(), "{what}: {d}");
}

/// GPU vs CPU: counts and hyperparameters equal, values within `tol` (relative, per parameter).
#[track_caller]
fn close(what: &str, got: &Snapshot, want: &Snapshot, tol: f64) {
    assert_eq!((got.step, got.skipped), (want.step, want.skipped), "{what}: (step, skipped)");
    assert_eq!(got.groups, want.groups, "{what}: groups");
    assert_eq!(got.hyper, want.hyper, "{what}: hyper");
    let r = max_rel(&got.values, &want.values);
    assert!(r <= tol, "{what}: GPU vs CPU relative difference {r:e} > {tol:e}");
}

/// `s` with the hyperparameters (not the counters) of `y`, and its groups with `groups`.
fn with_config_of(s: &Snapshot, y: &Snapshot, groups: bool) -> Snapshot {
    let mut s = s.clone();
    match (s.hyper.as_object_mut(), y.hyper.as_object()) {
        (Some(dst), Some(src)) => {
            for (k, v) in src {
                if !["aux_step", "root_fallbacks", "root_failures"].contains(&k.as_str()) {
                    dst.insert(k.clone(), v.clone());
                }
            }
        }
        _ => s.hyper = y.hyper.clone(),
    }
    if groups && s.groups.len() == y.groups.len() {
        s.groups = y.groups.clone();
    }
    s
}

/// Item 1 and 2: X's checkpoint at step `a` into a Y-built optimizer, `b` more steps.
fn config_change<C: Debug>(f: &Fam<C>, x: &C, y: &C, (a, b): (usize, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let label = format!("{} X={x:?} Y={y:?}", f.name);
    let (mut want, mut at_a, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for &be in f.backends {
        let mut straight = (f.make)(x, be);
        run(f, straight.as_mut(), 0..a + b);
        let w = straight.snapshot().unwrap();
        let mut first = (f.make)(x, be);
        run(f, first.as_mut(), 0..a);
        let s = first.snapshot().unwrap();
        let path = dir.path().join(format!("{be:?}.safetensors"));
        first.save(&path).unwrap();
        // Through a file.
        let mut r = (f.make)(y, be);
        r.load(&path).unwrap();
        same(&format!("[{be:?}] {label}: state right after load"), &r.snapshot().unwrap(), &s);
        run(f, r.as_mut(), a..a + b);
        same(&format!("[{be:?}] {label}: {a} + {b} resumed under Y vs {} straight", a + b), &r.snapshot().unwrap(), &w);
        // Through a snapshot.
        let mut r2 = (f.make)(y, be);
        r2.restore(s.clone()).unwrap();
        run(f, r2.as_mut(), a..a + b);
        same(&format!("[{be:?}] {label}: restored snapshot"), &r2.snapshot().unwrap(), &w);
        // Built under X, restored to Y's state (replanned to Y), then to X's: must be X again.
        let mut other = (f.make)(y, be);
        run(f, other.as_mut(), 0..a);
        let mut r3 = (f.make)(x, be);
        r3.restore(other.snapshot().unwrap()).unwrap();
        r3.restore(s.clone()).unwrap();
        run(f, r3.as_mut(), a..a + b);
        same(&format!("[{be:?}] {label}: X-built, restored to Y then back to X"), &r3.snapshot().unwrap(), &w);
        // X's step-0 checkpoint into a Y-built optimizer that has stepped: a fresh start under X.
        let s0 = (f.make)(x, be).snapshot().unwrap();
        let mut r4 = (f.make)(y, be);
        run(f, r4.as_mut(), 0..2);
        r4.restore(s0).unwrap();
        run(f, r4.as_mut(), 0..a + b);
        same(&format!("[{be:?}] {label}: X's step-0 snapshot into a stepped Y"), &r4.snapshot().unwrap(), &w);
        want.push(w);
        at_a.push(s);
        files.push(path);
    }
    // The case is sensitive: continuing under Y's hyperparameters (what a stale build config would
    // do) lands elsewhere, by far more than the GPU-CPU tolerance.
    let last = f.backends.len() - 1;
    let be = f.backends[last];
    let y_snap = (f.make)(y, be).snapshot().unwrap();
    let gap = |groups: bool| {
        let mut alt = (f.make)(y, be);
        alt.restore(with_config_of(&at_a[last], &y_snap, groups)).unwrap();
        run(f, alt.as_mut(), a..a + b);
        max_rel(&alt.snapshot().unwrap().values, &want[last].values)
    };
    // Y's hyperparameters alone (elementwise: not its groups' lr / decay) must matter, except for
    // signSGD, which has no others, and plain SGD.
    let (gh, gg) = (gap(false), gap(true));
    eprintln!(
        "{label}: continuing under Y's hyperparameters would differ by {gh:e} (with its groups {gg:e}; tol {:e})",
        f.tol
    );
    // (plain SGD's only other one, weight_decouple, is the same update without momentum.)
    let g = if ["signsgd", "sgd-plain"].contains(&f.name) { gg } else { gh };
    assert!(g > 10.0 * f.tol, "{label}: Y's hyperparameters barely change the continuation ({g:e})");
    // Across backends.
    if f.backends.len() == 2 {
        for (from, to) in [(0, 1), (1, 0)] {
            let mut o = (f.make)(y, f.backends[to]);
            o.load(&files[from]).unwrap();
            let what = format!("{label}: {:?} file into {:?}", f.backends[from], f.backends[to]);
            same(&format!("{what}: state right after load"), &o.snapshot().unwrap(), &at_a[from]);
            run(f, o.as_mut(), a..a + b);
            close(&what, &o.snapshot().unwrap(), &want[from], f.tol);
        }
    }
}

/// Item 3: lr / decay changes. `before` is applied before the save (and must survive it), `after`
/// after a restore (and must take effect); the Y-built optimizer gets `after` before the load too
/// (the file's values must replace it).
fn schedule<C: Debug>(
    f: &Fam<C>,
    x: &C,
    y: &C,
    (a, b): (usize, usize),
    before: &dyn Fn(&mut dyn Stepper),
    after: &dyn Fn(&mut dyn Stepper),
) {
    let dir = tempfile::tempdir().unwrap();
    let label = format!("{} X={x:?} Y={y:?}", f.name);
    let (mut want, mut files) = (Vec::new(), Vec::new());
    for &be in f.backends {
        let l = format!("[{be:?}] {label}");
        // Straight runs: with `before` at a; with `after` at a; with both.
        let straight = |first: Option<Tweak>, second: Option<Tweak>| {
            let mut o = (f.make)(x, be);
            run(f, o.as_mut(), 0..a);
            if let Some(c) = first {
                c(o.as_mut());
            }
            if let Some(c) = second {
                c(o.as_mut());
            }
            run(f, o.as_mut(), a..a + b);
            o.snapshot().unwrap()
        };
        let w0 = straight(None, None);
        let w1 = straight(Some(before), None);
        let w2 = straight(None, Some(after));
        let w3 = straight(Some(before), Some(after));
        for (n, w) in [("before", &w1), ("after", &w2)] {
            let gap = max_rel(&w.values, &w0.values);
            assert!(gap > 10.0 * f.tol, "{l}: the `{n}` change barely moves the run ({gap:e})");
        }
        let save = |change: bool, name: &str| {
            let mut o = (f.make)(x, be);
            run(f, o.as_mut(), 0..a);
            if change {
                before(o.as_mut());
            }
            let p = dir.path().join(format!("{be:?}-{name}.safetensors"));
            o.save(&p).unwrap();
            (o.snapshot().unwrap(), p)
        };
        let (s1, p1) = save(true, "changed");
        let (_, p0) = save(false, "plain");
        // Changed before the save: the file carries the changes (and overrides the Y-built one's).
        let mut r = (f.make)(y, be);
        after(r.as_mut());
        r.load(&p1).unwrap();
        same(&format!("{l}: lr/decay set before the save, right after load"), &r.snapshot().unwrap(), &s1);
        run(f, r.as_mut(), a..a + b);
        same(&format!("{l}: lr/decay set before the save"), &r.snapshot().unwrap(), &w1);
        // Changed after the restore: the change takes effect.
        let mut r = (f.make)(y, be);
        r.load(&p0).unwrap();
        after(r.as_mut());
        run(f, r.as_mut(), a..a + b);
        same(&format!("{l}: lr/decay set after the restore"), &r.snapshot().unwrap(), &w2);
        // Both.
        let mut r = (f.make)(y, be);
        r.load(&p1).unwrap();
        after(r.as_mut());
        run(f, r.as_mut(), a..a + b);
        same(&format!("{l}: lr/decay set before the save and after the restore"), &r.snapshot().unwrap(), &w3);
        want.push(w1);
        files.push(p1);
    }
    if f.backends.len() == 2 {
        for (from, to) in [(0, 1), (1, 0)] {
            let mut o = (f.make)(y, f.backends[to]);
            o.load(&files[from]).unwrap();
            run(f, o.as_mut(), a..a + b);
            let what =
                format!("{label}: lr/decay set before the save, {:?} file into {:?}", f.backends[from], f.backends[to]);
            close(&what, &o.snapshot().unwrap(), &want[from], f.tol);
        }
    }
}

/// Item 3: a checkpoint with a skipped step restores its count; a NaN gradient written before a
/// restore still skips the next step; across backends too.
fn skips<C: Debug>(f: &Fam<C>, x: &C, y: &C, (a, b): (usize, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let label = format!("{} X={x:?} Y={y:?}", f.name);
    let (mut want, mut files) = (Vec::new(), Vec::new());
    for &be in f.backends {
        let l = format!("[{be:?}] {label}");
        let mut straight = (f.make)(x, be);
        history(f, straight.as_mut(), a);
        run(f, straight.as_mut(), a..a + b);
        let w = straight.snapshot().unwrap();
        assert_eq!(w.skipped, 1, "{l}");
        let mut first = (f.make)(x, be);
        history(f, first.as_mut(), a);
        let s = first.snapshot().unwrap();
        assert_eq!((s.step, s.skipped), (a as u64, 1), "{l}: the snapshot's counts");
        let p = dir.path().join(format!("{be:?}.safetensors"));
        first.save(&p).unwrap();
        // Saved right after a skipped step, nothing queried in between (the GPU guard's flag is
        // still pending then).
        let mut late = (f.make)(x, be);
        run(f, late.as_mut(), 0..a);
        poison(f, late.as_mut(), 501);
        late.step().unwrap();
        let pl = dir.path().join(format!("{be:?}-late.safetensors"));
        late.save(&pl).unwrap();
        let mut rl = (f.make)(y, be);
        rl.load(&pl).unwrap();
        assert_eq!((rl.step_count().unwrap(), rl.skipped_steps().unwrap()), (a as u64, 1), "{l}: saved after a skip");
        let mut r = (f.make)(y, be);
        r.load(&p).unwrap();
        assert_eq!(r.skipped_steps().unwrap(), 1, "{l}: skip count restored");
        assert_eq!(r.step_count().unwrap(), a as u64, "{l}: step count restored");
        assert!(!r.found_non_finite().unwrap(), "{l}: found_non_finite after a restore");
        run(f, r.as_mut(), a..a + b);
        same(&format!("{l}: resumed after a skipped step"), &r.snapshot().unwrap(), &w);
        // A NaN written before the restore is still there after it: the next step is skipped.
        let mut v = (f.make)(y, be);
        poison(f, v.as_mut(), 600);
        v.load(&p).unwrap();
        v.step().unwrap();
        assert!(v.found_non_finite().unwrap(), "{l}: a NaN gradient written before the restore did not skip");
        assert_eq!((v.step_count().unwrap(), v.skipped_steps().unwrap()), (a as u64, 2), "{l}");
        let now = v.snapshot().unwrap();
        assert_eq!(max_abs(&now.values.concat(), &s.values.concat()), 0.0, "{l}: a skipped step moved parameters");
        run(f, v.as_mut(), a..a + b);
        let mut w2 = w.clone();
        w2.skipped = 2;
        same(&format!("{l}: after the skipped post-restore step"), &v.snapshot().unwrap(), &w2);
        want.push(w);
        files.push(p);
    }
    if f.backends.len() == 2 {
        for (from, to) in [(0, 1), (1, 0)] {
            let mut o = (f.make)(y, f.backends[to]);
            o.load(&files[from]).unwrap();
            assert_eq!(o.skipped_steps().unwrap(), 1, "{label}: skip count across backends");
            run(f, o.as_mut(), a..a + b);
            let what = format!("{label}: skipped step, {:?} file into {:?}", f.backends[from], f.backends[to]);
            close(&what, &o.snapshot().unwrap(), &want[from], f.tol);
        }
    }
}

/// Sets every number under key `key` (at any depth) to `v`; returns whether there was one.
fn set_all(h: &mut Value, key: &str, v: Value) -> bool {
    let mut found = false;
    match h {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == key && x.is_number() {
                    *x = v.clone();
                    found = true;
                } else {
                    found |= set_all(x, key, v.clone());
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                found |= set_all(x, key, v.clone());
            }
        }
        _ => {}
    }
    found
}

/// A real checkpoint of another optimizer (CPU `alg`) over the same parameters.
fn foreign(metas: &[ParamMeta], alg: Algorithm) -> Snapshot {
    let mut b = OptimizerBuilder::new(alg);
    for _ in 0..metas.iter().map(|m| m.group).max().unwrap_or(0) {
        b.group(GroupOptions::default()).unwrap();
    }
    for m in metas {
        b.param(&m.name, &vec![0.25; m.len()], &m.shape, GroupId(m.group)).unwrap();
    }
    let mut o = b.build_cpu().unwrap();
    for (i, m) in metas.iter().enumerate() {
        o.write_grad(ParamId(i), &vec![0.1; m.len()]).unwrap();
    }
    o.step().unwrap();
    o.snapshot().unwrap()
}

/// The generic malformed variants of a good snapshot.
fn mutations(s: &Snapshot) -> Vec<(String, Snapshot)> {
    let mut out: Vec<(String, Snapshot)> = Vec::new();
    let mut m = |name: &str, f: &dyn Fn(&mut Snapshot) -> bool| {
        let mut t = s.clone();
        if f(&mut t) {
            out.push((name.to_string(), t));
        }
    };
    let i0 = s.params.iter().position(|p| !p.is_empty()).expect("a non-empty parameter");
    let st = s.states.iter().enumerate().find_map(|(i, v)| v.iter().position(|(_, t)| !t.is_empty()).map(|k| (i, k)));
    let other = if s.algorithm == "adamw" { "lion" } else { "adamw" };
    m("another optimizer's name", &|t| {
        t.algorithm = other.into();
        true
    });
    m("a parameter of another shape", &|t| {
        let n = t.params[i0].len();
        t.params[i0].shape = vec![n + 1];
        t.values[i0].push(0.0);
        true
    });
    m("a parameter transposed", &|t| {
        if t.params[i0].shape.len() < 2 || t.params[i0].shape[0] == t.params[i0].shape[1] {
            return false;
        }
        t.params[i0].shape.swap(0, 1);
        true
    });
    m("values of the wrong length", &|t| {
        t.values[i0].push(0.0);
        true
    });
    m("a parameter renamed", &|t| {
        t.params[i0].name.push_str("_x");
        true
    });
    m("an extra parameter", &|t| {
        let mut p = t.params[i0].clone();
        p.name.push_str("_extra");
        t.params.push(p);
        t.values.push(t.values[i0].clone());
        t.states.push(t.states[i0].clone());
        true
    });
    m("a parameter missing", &|t| {
        t.params.pop();
        t.values.pop();
        t.states.pop();
        true
    });
    if let Some((i, k)) = st {
        m("a state tensor shortened", &|t| {
            t.states[i][k].1.pop();
            true
        });
        m("a state tensor lengthened", &|t| {
            t.states[i][k].1.push(0.0);
            true
        });
        m("a state tensor missing", &|t| {
            t.states[i].remove(k);
            true
        });
        m("a state tensor renamed", &|t| {
            t.states[i][k].0 = "bogus".into();
            true
        });
        m("an extra state tensor", &|t| {
            let v = t.states[i][k].1.clone();
            t.states[i].push(("bogus".into(), v));
            true
        });
    }
    m("a negative lr in the hyperparameters", &|t| set_all(&mut t.hyper, "lr", serde_json::json!(-1.0)));
    m("an lr that is a string", &|t| set_all(&mut t.hyper, "lr", serde_json::json!("fast")));
    m("hyperparameters that are a string", &|t| {
        t.hyper = serde_json::json!("garbage");
        true
    });
    out
}

/// Item 4: every refused restore leaves the optimizer as it was. `extra`: family-specific refusals.
fn refusals<C: Debug>(
    f: &Fam<C>,
    x: &C,
    y: &C,
    a: usize,
    extra: &dyn Fn(Be) -> Vec<(String, Snapshot)>,
    generic: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    for &be in f.backends {
        let l = format!("[{be:?}] {} X={x:?} Y={y:?}", f.name);
        let mut src = (f.make)(x, be);
        run(f, src.as_mut(), 0..a);
        let good = src.snapshot().unwrap();
        let mut bad = extra(be);
        if generic {
            bad.extend(mutations(&good));
            let alg: Algorithm =
                if good.algorithm == "adamw" { Lion::default().into() } else { AdamW::default().into() };
            bad.push(("another optimizer's checkpoint".into(), foreign(&good.params, alg)));
        }
        let mut victim = (f.make)(y, be);
        let mut twin = (f.make)(y, be);
        for o in [&mut victim, &mut twin] {
            if f.skips {
                history(f, o.as_mut(), a + 1);
                // A NaN gradient pending at the refused restores.
                poison(f, o.as_mut(), 700);
            } else {
                run(f, o.as_mut(), 0..a + 1);
            }
        }
        let before = victim.snapshot().unwrap();
        for (name, s) in bad {
            let r = victim.restore(s);
            assert!(r.is_err(), "{l}: {name}: accepted");
            same(&format!("{l}: refused ({name}) and changed"), &victim.snapshot().unwrap(), &before);
        }
        if generic {
            let path = dir.path().join(format!("{be:?}.safetensors"));
            src.save(&path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let n = bytes.len();
            let mut flipped = bytes.clone();
            flipped[n - 3] ^= 0x10;
            let mut header = bytes.clone();
            header[12] ^= 0x01;
            let files: [(&str, &[u8]); 5] = [
                ("a flipped data byte", &flipped),
                ("a flipped header byte", &header),
                ("truncated", &bytes[..n / 2]),
                ("not a checkpoint", b"hello"),
                ("empty", b""),
            ];
            for (name, data) in files {
                std::fs::write(&path, data).unwrap();
                let r = victim.load(&path);
                assert!(r.is_err(), "{l}: file {name}: accepted");
                same(&format!("{l}: refused file ({name}) and changed"), &victim.snapshot().unwrap(), &before);
            }
            assert!(matches!(victim.load(&dir.path().join("missing")), Err(Error::Io { .. })), "{l}");
            same(&format!("{l}: missing file"), &victim.snapshot().unwrap(), &before);
        }
        // The next steps equal the untouched twin's (the pending NaN skips both).
        victim.step().unwrap();
        twin.step().unwrap();
        assert_eq!(victim.found_non_finite().unwrap(), twin.found_non_finite().unwrap(), "{l}");
        run(f, victim.as_mut(), a + 1..a + 3);
        run(f, twin.as_mut(), a + 1..a + 3);
        same(
            &format!("{l}: after refused restores vs an untouched twin"),
            &victim.snapshot().unwrap(),
            &twin.snapshot().unwrap(),
        );
    }
}

/// `x`'s snapshot after `a` steps on `be`.
fn snap_of<C>(f: &Fam<C>, x: &C, be: Be, a: usize) -> Snapshot {
    let mut o = (f.make)(x, be);
    run(f, o.as_mut(), 0..a);
    o.snapshot().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Elementwise (OptimizerBuilder)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Ew {
    alg: Algorithm,
    guard: bool,
}

fn ew(alg: impl Into<Algorithm>, guard: bool) -> Ew {
    Ew { alg: alg.into(), guard }
}

const EW_SHAPES: [&[usize]; 3] = [&[5], &[3, 4], &[7]];

fn ew_make(c: &Ew, be: Be) -> Opt {
    let mut b = OptimizerBuilder::new(c.alg.clone());
    // Group 1's lr follows the algorithm's (so X's and Y's differ), its decay is fixed.
    let (lr, _) = c.alg.lr_wd();
    let g1 = b.group(GroupOptions { lr: Some(lr * 0.5), weight_decay: Some(0.0) }).unwrap();
    let mut rng = TestRng::new(11);
    for (i, s) in EW_SHAPES.iter().enumerate() {
        let g = if i == 1 { g1 } else { b.default_group() };
        b.param(&format!("w{i}"), &rng.uniforms(s.iter().product(), 0.5), s, g).unwrap();
    }
    b.guard_non_finite(c.guard);
    match be {
        Be::Gpu => Box::new(b.build(&gctx()).unwrap()),
        Be::Cpu => Box::new(b.build_cpu().unwrap()),
    }
}

fn ew_feed(o: &mut dyn Stepper, k: usize, hess: bool) {
    for (i, s) in EW_SHAPES.iter().enumerate() {
        let n = s.iter().product();
        o.write_grad(ParamId(i), &gvec(k, i, n)).unwrap();
        if hess {
            let h: Vec<f32> = gvec(k, 100 + i, n).iter().map(|v| v.abs() + 0.1).collect();
            o.write_hess_diag(ParamId(i), &h).unwrap();
        }
    }
}

/// Each pair: config_change; `schedule` and `skips` on the first.
fn ew_pairs(name: &str, pairs: &[(Ew, Ew)]) {
    for (x, y) in pairs {
        let hess = x.alg.needs_hessian();
        let feed = move |o: &mut dyn Stepper, k: usize| ew_feed(o, k, hess);
        let f = Fam { name, make: &ew_make, feed: &feed, tol: 1e-5, backends: BOTH, skips: true };
        config_change(&f, x, y, (3, 3));
    }
}

fn ew_schedule_and_skips(name: &str, x: Ew, y: Ew) {
    let hess = x.alg.needs_hessian();
    let feed = move |o: &mut dyn Stepper, k: usize| ew_feed(o, k, hess);
    let f = Fam { name, make: &ew_make, feed: &feed, tol: 1e-5, backends: BOTH, skips: true };
    let (lr, _) = x.alg.lr_wd();
    let before = move |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), lr * 0.3).unwrap();
        o.set_weight_decay(GroupId(0), 0.2).unwrap();
        o.set_lr(GroupId(1), lr * 2.0).unwrap();
    };
    let after = move |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), lr * 3.0).unwrap();
        o.set_weight_decay(GroupId(1), 0.3).unwrap();
    };
    schedule(&f, &x, &y, (3, 3), &before, &after);
    let (xg, yg) = (Ew { guard: true, ..x.clone() }, Ew { guard: true, ..y.clone() });
    skips(&f, &xg, &yg, (3, 3));
    refusals(&f, &xg, &yg, 2, &|_| Vec::new(), true);
}

#[test]
fn qa_ew_sgd_signsgd_signum_config_change() {
    ew_pairs(
        "sgd",
        &[(
            ew(
                Sgd {
                    lr: 0.05,
                    momentum: 0.9,
                    nesterov: true,
                    weight_decay: 0.01,
                    weight_decouple: true,
                    ..Sgd::default()
                },
                true,
            ),
            ew(Sgd { lr: 0.01, momentum: 0.5, dampening: 0.3, weight_decay: 0.1, ..Sgd::default() }, false),
        )],
    );
    ew_pairs(
        "sgd-plain",
        &[(
            ew(Sgd { lr: 0.05, weight_decay: 0.01, ..Sgd::default() }, true),
            ew(Sgd { lr: 0.01, weight_decay: 0.2, weight_decouple: true, ..Sgd::default() }, false),
        )],
    );
    ew_pairs("signsgd", &[(ew(SignSgd { lr: 0.02, weight_decay: 0.1 }, true), ew(SignSgd::default(), false))]);
    ew_pairs(
        "signum",
        &[(ew(Signum { lr: 0.02, momentum: 0.7, weight_decay: 0.1 }, true), ew(Signum::default(), false))],
    );
}

#[test]
fn qa_ew_lion_and_lion_k_maps_config_change() {
    let lion = |k_map: KMap, k_p: Option<f64>, k_scale: f64| {
        ew(Lion { lr: 3e-3, beta1: 0.8, beta2: 0.95, weight_decay: 0.1, k_map, k_p, k_scale }, true)
    };
    let y = |k_map: KMap, k_p: Option<f64>, k_scale: f64| ew(Lion { k_map, k_p, k_scale, ..Lion::default() }, false);
    ew_pairs(
        "lion",
        &[
            (lion(KMap::Sign, None, 1.0), y(KMap::Sign, None, 1.0)),
            (lion(KMap::L2, None, 1.0), y(KMap::Lp, Some(3.0), 1.0)),
            (lion(KMap::Lp, Some(1.5), 1.0), y(KMap::L2, None, 1.0)),
            (lion(KMap::Lp, Some(4.0), 1.0), y(KMap::Lp, Some(1.2), 1.0)),
            (lion(KMap::Huber, None, 0.3), y(KMap::Tanh, None, 2.0)),
            (lion(KMap::Tanh, None, 0.5), y(KMap::Relativistic, None, 1.0)),
            (lion(KMap::Relativistic, None, 0.2), y(KMap::Huber, None, 1.0)),
        ],
    );
}

#[test]
fn qa_ew_ano_anolog_adamw_adamomentum_config_change() {
    let ano = Ano { lr: 3e-3, beta1: 0.8, beta2: 0.9, eps: 1e-6, weight_decay: 0.1 };
    ew_pairs("ano", &[(ew(Algorithm::Ano(ano.clone()), true), ew(Algorithm::Ano(Ano::default()), false))]);
    ew_pairs("anolog", &[(ew(Algorithm::Anolog(ano), true), ew(Algorithm::Anolog(Ano::default()), false))]);
    let adamw = AdamW { lr: 1e-2, beta1: 0.8, beta2: 0.9, eps: 1e-6, weight_decay: 0.1, amsgrad: false };
    ew_pairs(
        "adamw",
        &[
            (ew(adamw.clone(), true), ew(AdamW::default(), false)),
            (ew(AdamW { amsgrad: true, ..adamw }, true), ew(AdamW { amsgrad: true, ..AdamW::default() }, false)),
        ],
    );
    ew_pairs(
        "adamomentum",
        &[(
            ew(
                AdaMomentum {
                    lr: 1e-2,
                    beta1: 0.8,
                    beta2: 0.9,
                    eps: 1e-6,
                    weight_decay: 0.1,
                    rectify: true,
                    degenerated_to_sgd: false,
                },
                true,
            ),
            ew(AdaMomentum::default(), false),
        )],
    );
}

#[test]
fn qa_ew_adabound_config_change() {
    let x = AdaBound {
        lr: 2e-3,
        beta1: 0.8,
        beta2: 0.9,
        eps: 1e-6,
        weight_decay: 0.01,
        final_lr: 0.05,
        gamma: 1e-2,
        amsbound: false,
        weight_decouple: true,
    };
    ew_pairs(
        "adabound",
        &[
            (ew(x.clone(), true), ew(AdaBound::default(), false)),
            (
                ew(AdaBound { amsbound: true, weight_decouple: false, ..x }, true),
                ew(AdaBound { amsbound: true, lr: 5e-3, final_lr: 0.3, gamma: 0.1, ..AdaBound::default() }, false),
            ),
        ],
    );
}

#[test]
fn qa_ew_ademamix_warmups_config_change() {
    let x =
        AdEMAMix { lr: 1e-2, beta3: 0.999, alpha: 5.0, t_alpha_beta3: 10.0, weight_decay: 0.1, ..AdEMAMix::default() };
    ew_pairs(
        "ademamix",
        &[
            (ew(x.clone(), true), ew(AdEMAMix::default(), false)),
            (
                ew(AdEMAMix { t_alpha: Some(4.0), t_beta3: Some(8.0), ..x }, true),
                ew(AdEMAMix { t_alpha_beta3: 100.0, ..AdEMAMix::default() }, false),
            ),
        ],
    );
}

#[test]
fn qa_ew_mars_config_change() {
    ew_pairs(
        "mars",
        &[
            (
                ew(
                    Mars {
                        lr: 1e-2,
                        beta1: 0.9,
                        beta2: 0.95,
                        eps: 1e-6,
                        weight_decay: 0.1,
                        gamma: 0.05,
                        ..Mars::default()
                    },
                    true,
                ),
                ew(Mars::default(), false),
            ),
            (
                ew(
                    Mars {
                        lr: 3e-3,
                        gamma: 0.1,
                        beta1: 0.8,
                        weight_decay: 0.1,
                        variant: MarsVariant::Lion,
                        ..Mars::default()
                    },
                    true,
                ),
                ew(Mars { variant: MarsVariant::Lion, ..Mars::default() }, false),
            ),
        ],
    );
}

#[test]
fn qa_ew_adahessian_sophia_config_change() {
    ew_pairs(
        "adahessian",
        &[
            (
                ew(AdaHessian { lr: 0.1, beta1: 0.8, eps: 1e-3, hessian_power: 0.5, ..AdaHessian::default() }, true),
                ew(AdaHessian { hessian_power: 0.8, ..AdaHessian::default() }, false),
            ),
            (
                ew(AdaHessian { lr: 0.1, beta2: 0.9, weight_decay: 0.1, ..AdaHessian::default() }, true),
                ew(AdaHessian::default(), false),
            ),
        ],
    );
    ew_pairs(
        "sophia",
        &[
            (
                ew(Sophia { lr: 1e-2, hess_interval: 2, rho: 0.1, beta1: 0.9, ..Sophia::default() }, true),
                ew(Sophia { hess_interval: 10, ..Sophia::default() }, false),
            ),
            (
                ew(
                    Sophia {
                        lr: 1e-2,
                        hess_interval: 3,
                        rho: 0.5,
                        variant: SophiaVariant::Sophiah,
                        ..Sophia::default()
                    },
                    true,
                ),
                ew(Sophia { hess_interval: 1, variant: SophiaVariant::Sophiah, ..Sophia::default() }, false),
            ),
        ],
    );
}

#[test]
fn qa_ew_schedule_skips_refusals_adamw_adabound() {
    let adamw = AdamW { lr: 1e-2, beta1: 0.8, beta2: 0.9, eps: 1e-6, weight_decay: 0.1, amsgrad: true };
    ew_schedule_and_skips("adamw", ew(adamw, false), ew(AdamW { amsgrad: true, ..AdamW::default() }, false));
    // AdaBound's bounds scale with lr / base_lr: base_lr must come from the file too.
    let x = AdaBound { lr: 2e-3, final_lr: 0.05, gamma: 1e-2, weight_decay: 0.01, ..AdaBound::default() };
    ew_schedule_and_skips("adabound", ew(x, false), ew(AdaBound { lr: 7e-3, ..AdaBound::default() }, false));
}

#[test]
fn qa_ew_schedule_skips_refusals_lion_k_ademamix_sophia_mars() {
    let lk = Lion { lr: 3e-3, k_map: KMap::Lp, k_p: Some(3.0), weight_decay: 0.1, ..Lion::default() };
    ew_schedule_and_skips("lion-k", ew(lk, false), ew(Lion { k_map: KMap::L2, ..Lion::default() }, false));
    let x = AdEMAMix { lr: 1e-2, t_alpha_beta3: 10.0, alpha: 5.0, ..AdEMAMix::default() };
    ew_schedule_and_skips("ademamix", ew(x, false), ew(AdEMAMix::default(), false));
    let x = Sophia { lr: 1e-2, hess_interval: 2, rho: 0.1, ..Sophia::default() };
    ew_schedule_and_skips("sophia", ew(x, false), ew(Sophia::default(), false));
    let x = Mars { lr: 1e-2, gamma: 0.05, ..Mars::default() };
    ew_schedule_and_skips("mars", ew(x, false), ew(Mars::default(), false));
}

/// Checkpoints whose hyperparameters need another kernel or state layout are refused, change
/// nothing, and the next steps equal an untouched twin's.
#[test]
fn qa_ew_other_kernel_or_layout_refused() {
    let pairs: Vec<(Algorithm, Algorithm)> = vec![
        (Lion { k_map: KMap::L2, ..Lion::default() }.into(), Lion::default().into()),
        (Lion::default().into(), Lion { k_map: KMap::Huber, ..Lion::default() }.into()),
        (
            Lion { k_map: KMap::Tanh, ..Lion::default() }.into(),
            Lion { k_map: KMap::Lp, k_p: Some(3.0), ..Lion::default() }.into(),
        ),
        (Mars { variant: MarsVariant::Lion, ..Mars::default() }.into(), Mars::default().into()),
        (AdamW { amsgrad: true, ..AdamW::default() }.into(), AdamW::default().into()),
        (AdaBound::default().into(), AdaBound { amsbound: true, ..AdaBound::default() }.into()),
        (Sgd { momentum: 0.9, ..Sgd::default() }.into(), Sgd::default().into()),
        (AdaHessian::default().into(), AdaHessian { hessian_power: 0.5, ..AdaHessian::default() }.into()),
        (Sophia { variant: SophiaVariant::Sophiah, ..Sophia::default() }.into(), Sophia::default().into()),
        (Algorithm::Ano(Ano::default()), Algorithm::Anolog(Ano::default())),
    ];
    for (xa, ya) in pairs {
        let hess = xa.needs_hessian();
        let feed = move |o: &mut dyn Stepper, k: usize| ew_feed(o, k, hess);
        let f = Fam { name: "elementwise", make: &ew_make, feed: &feed, tol: 1e-5, backends: BOTH, skips: true };
        let (x, y) = (ew(xa, true), ew(ya, true));
        let extra = |be: Be| vec![("another kernel / layout".to_string(), snap_of(&f, &x, be, 2))];
        refusals(&f, &x, &y, 2, &extra, false);
    }
}

// ---------------------------------------------------------------------------------------------
// Muon with its aux AdamW
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct MuonC {
    m: MuonConfig,
    aux: AdamW,
}

const MUON_SHAPES: [&[usize]; 6] = [&[6, 6], &[6, 6], &[3, 5], &[2, 2, 3], &[5], &[2, 3]];

fn muon_make(c: &MuonC, be: Be) -> Opt {
    let mut b = MuonBuilder::new(c.m.clone()).aux_adamw(c.aux.clone());
    let mut rng = TestRng::new(21);
    for (i, s) in MUON_SHAPES.iter().enumerate() {
        let d = rng.uniforms(s.iter().product(), 0.5);
        if i == MUON_SHAPES.len() - 1 {
            b.param_adamw(&format!("p{i}"), &d, s).unwrap();
        } else {
            b.param(&format!("p{i}"), &d, s).unwrap();
        }
    }
    match be {
        Be::Gpu => Box::new(b.build(&gctx()).unwrap()),
        Be::Cpu => Box::new(b.build_cpu().unwrap()),
    }
}

fn shapes_feed(shapes: &'static [&'static [usize]]) -> impl Fn(&mut dyn Stepper, usize) {
    move |o: &mut dyn Stepper, k: usize| {
        for (i, s) in shapes.iter().enumerate() {
            o.write_grad(ParamId(i), &gvec(k, i, s.iter().product())).unwrap();
        }
    }
}

fn muon_x() -> MuonC {
    MuonC {
        m: MuonConfig {
            lr: 0.02,
            momentum: 0.9,
            nesterov: false,
            ns_steps: 3,
            ns_coefficients: [2.0, -1.5, 0.5],
            weight_decay: 0.05,
            adjust_lr: AdjustLr::MatchRmsAdamw,
        },
        aux: AdamW { lr: 2e-3, beta1: 0.8, beta2: 0.9, eps: 1e-6, weight_decay: 0.02, amsgrad: false },
    }
}

fn muon_y() -> MuonC {
    MuonC { m: MuonConfig::default(), aux: gpuopt::optim::muon::aux_adamw_default() }
}

#[test]
fn qa_muon_config_change() {
    let feed = shapes_feed(&MUON_SHAPES);
    let f = Fam { name: "muon", make: &muon_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    config_change(&f, &muon_x(), &muon_y(), (3, 3));
    // The other way, and the other adjust_lr values.
    let x2 = MuonC {
        m: MuonConfig { lr: 0.03, ns_steps: 7, adjust_lr: AdjustLr::None, ..MuonConfig::default() },
        ..muon_y()
    };
    config_change(&f, &x2, &muon_x(), (2, 3));
    let x3 = MuonC { m: MuonConfig { ns_steps: 0, adjust_lr: AdjustLr::Original, ..muon_x().m }, ..muon_x() };
    config_change(&f, &x3, &muon_y(), (2, 2));
}

#[test]
fn qa_muon_schedule_skips_refusals() {
    let feed = shapes_feed(&MUON_SHAPES);
    let f = Fam { name: "muon", make: &muon_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    let before = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.005).unwrap();
        o.set_weight_decay(GroupId(0), 0.2).unwrap();
        o.set_lr(GroupId(1), 1e-2).unwrap();
        o.set_weight_decay(GroupId(1), 0.1).unwrap();
    };
    let after = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.05).unwrap();
        o.set_lr(GroupId(1), 2e-4).unwrap();
    };
    schedule(&f, &muon_x(), &muon_y(), (3, 3), &before, &after);
    skips(&f, &muon_x(), &muon_y(), (3, 3));
    let extra = |be: Be| {
        let good = snap_of(&f, &muon_x(), be, 2);
        let mut v = Vec::new();
        // The aux AdamW's part alone is bad (the Muon part is fine): the aux restore runs first.
        let mut t = good.clone();
        t.hyper["aux"]["beta1"] = serde_json::json!(1.5);
        v.push(("aux beta1 1.5".to_string(), t));
        let mut t = good.clone();
        t.hyper["aux"]["amsgrad"] = serde_json::json!(true);
        v.push(("aux amsgrad (another layout)".to_string(), t));
        let mut t = good.clone();
        t.hyper.as_object_mut().unwrap().remove("aux_step");
        v.push(("aux_step missing".to_string(), t));
        let mut t = good.clone();
        t.groups.pop();
        v.push(("the aux group missing".to_string(), t));
        let mut t = good.clone();
        t.hyper["muon"]["ns_steps"] = serde_json::json!(100);
        v.push(("ns_steps 100".to_string(), t));
        let mut t = good.clone();
        t.hyper["muon"]["ns_coefficients"] = serde_json::json!([1e39, 0.0, 0.0]);
        v.push(("ns_coefficients overflowing f32".to_string(), t));
        // A Muon parameter's momentum from the aux layout and the reverse.
        let mut t = good.clone();
        let last = t.states.len() - 1;
        t.states.swap(0, last);
        v.push(("states of a Muon and an AdamW parameter swapped".to_string(), t));
        v
    };
    refusals(&f, &muon_x(), &muon_y(), 2, &extra, true);
}

// ---------------------------------------------------------------------------------------------
// AuON / Hybrid-AuON
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct AuonC {
    c: AuonConfig,
    hybrid: bool,
}

const AUON_SHAPES: [&[usize]; 6] = [&[6, 6], &[6, 6], &[5], &[3, 2, 2], &[0], &[5]];

fn auon_make(c: &AuonC, be: Be) -> Opt {
    let mut b = AuonBuilder::new(c.c.clone(), c.hybrid);
    let mut rng = TestRng::new(22);
    for (i, s) in AUON_SHAPES.iter().enumerate() {
        b.param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 0.5), s).unwrap();
    }
    match be {
        Be::Gpu => Box::new(b.build(&gctx()).unwrap()),
        Be::Cpu => Box::new(b.build_cpu().unwrap()),
    }
}

fn auon_x() -> AuonConfig {
    AuonConfig {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.1,
        gamma: 3.0,
        ns_steps: 3,
        ns_coefficients: [2.0, -1.5, 0.5],
        variant: AuonVariant::Paper,
    }
}

#[test]
fn qa_auon_and_hybrid_config_change() {
    let feed = shapes_feed(&AUON_SHAPES);
    let f = Fam { name: "auon", make: &auon_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    for hybrid in [false, true] {
        let x = AuonC { c: auon_x(), hybrid };
        let y = AuonC { c: AuonConfig::default(), hybrid };
        config_change(&f, &x, &y, (3, 3));
        // Package saved, Paper built.
        let x2 = AuonC { c: AuonConfig { lr: 0.05, gamma: 0.7, ns_steps: 6, ..AuonConfig::default() }, hybrid };
        config_change(&f, &x2, &x, (2, 3));
        // Only momentum differs (not a planned value: must still be the file's).
        let x3 = AuonC { c: AuonConfig { momentum: 0.5, lr: 0.05, ..AuonConfig::default() }, hybrid };
        config_change(&f, &x3, &y, (2, 3));
    }
}

#[test]
fn qa_auon_schedule_skips_refusals() {
    let feed = shapes_feed(&AUON_SHAPES);
    let f = Fam { name: "auon", make: &auon_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    let before = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.01).unwrap();
        o.set_weight_decay(GroupId(0), 0.3).unwrap();
    };
    let after = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.1).unwrap();
        o.set_weight_decay(GroupId(0), 0.0).unwrap();
    };
    for hybrid in [false, true] {
        let x = AuonC { c: auon_x(), hybrid };
        let y = AuonC { c: AuonConfig::default(), hybrid };
        schedule(&f, &x, &y, (3, 3), &before, &after);
        skips(&f, &x, &y, (3, 3));
        let extra = |be: Be| {
            let other = AuonC { c: auon_x(), hybrid: !hybrid };
            let mut v = vec![("the other AuON's checkpoint".to_string(), snap_of(&f, &other, be, 2))];
            let mut t = snap_of(&f, &x, be, 2);
            t.hyper["gamma"] = serde_json::json!(0.0);
            v.push(("gamma 0".to_string(), t));
            let mut t = snap_of(&f, &x, be, 2);
            t.hyper["variant"] = serde_json::json!("nope");
            v.push(("an unknown variant".to_string(), t));
            v
        };
        refusals(&f, &x, &y, 2, &extra, true);
    }
}

// ---------------------------------------------------------------------------------------------
// REG
// ---------------------------------------------------------------------------------------------

const REG_SHAPES: [&[usize]; 5] = [&[6, 6], &[6, 6], &[7], &[0], &[3, 2, 2]];

fn reg_make(c: &RegConfig, be: Be) -> Opt {
    let mut b = RegBuilder::new(c.clone());
    let mut rng = TestRng::new(23);
    for (i, s) in REG_SHAPES.iter().enumerate() {
        b.param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 0.5), s).unwrap();
    }
    match be {
        Be::Gpu => Box::new(b.build(&gctx()).unwrap()),
        Be::Cpu => Box::new(b.build_cpu().unwrap()),
    }
}

fn reg_x() -> RegConfig {
    RegConfig { lr: 0.02, beta2: 0.8, alpha: 0.1, gamma: 1.05, eps: 1e-6, weight_decay: 0.1 }
}

#[test]
fn qa_reg_config_change_schedule_skips_refusals() {
    let feed = shapes_feed(&REG_SHAPES);
    let f = Fam { name: "reg", make: &reg_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    config_change(&f, &reg_x(), &RegConfig::default(), (3, 3));
    config_change(&f, &RegConfig { lr: 0.01, gamma: 1.5, ..RegConfig::default() }, &reg_x(), (1, 3));
    let before = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.005).unwrap();
        o.set_weight_decay(GroupId(0), 0.3).unwrap();
    };
    let after = |o: &mut dyn Stepper| o.set_lr(GroupId(0), 0.05).unwrap();
    schedule(&f, &reg_x(), &RegConfig::default(), (3, 3), &before, &after);
    skips(&f, &reg_x(), &RegConfig::default(), (3, 3));
    let extra = |be: Be| {
        let mut t = snap_of(&f, &reg_x(), be, 2);
        t.hyper["beta2"] = serde_json::json!(1.0);
        vec![("beta2 1".to_string(), t)]
    };
    refusals(&f, &reg_x(), &RegConfig::default(), 2, &extra, true);
}

// ---------------------------------------------------------------------------------------------
// ASGO, DASGO
// ---------------------------------------------------------------------------------------------

const MAT_SHAPES: [&[usize]; 4] = [&[5, 7], &[5, 7], &[7, 5], &[3, 2, 2]];

fn asgo_make(c: &AsgoConfig, be: Be) -> Opt {
    // Asgo<O> is generic over its backend: one filling function for both.
    fn filled<O: MatOps + 'static>(mut o: Asgo<O>) -> Opt {
        let mut rng = TestRng::new(24);
        for (i, s) in MAT_SHAPES.iter().enumerate() {
            o.add_param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 0.5), s).unwrap();
        }
        Box::new(o)
    }
    match be {
        Be::Gpu => filled(Asgo::gpu(&gctx(), c.clone()).unwrap()),
        Be::Cpu => filled(Asgo::cpu(c.clone()).unwrap()),
    }
}

fn asgo_x() -> AsgoConfig {
    AsgoConfig { lr: 0.03, momentum: 0.8, beta2: 0.9, eps: 1e-8, weight_decay: 0.05, root_iters: 4 }
}

#[test]
fn qa_asgo_config_change_schedule_skips_refusals() {
    let feed = shapes_feed(&MAT_SHAPES);
    let f = Fam { name: "asgo", make: &asgo_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    config_change(&f, &asgo_x(), &AsgoConfig::default(), (3, 3));
    config_change(&f, &AsgoConfig { root_iters: 12, lr: 0.02, ..AsgoConfig::default() }, &asgo_x(), (2, 3));
    let before = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.01).unwrap();
        o.set_weight_decay(GroupId(0), 0.3).unwrap();
    };
    let after = |o: &mut dyn Stepper| o.set_lr(GroupId(0), 0.08).unwrap();
    schedule(&f, &asgo_x(), &AsgoConfig::default(), (3, 3), &before, &after);
    skips(&f, &asgo_x(), &AsgoConfig::default(), (3, 3));
    let extra = |be: Be| {
        let good = snap_of(&f, &asgo_x(), be, 2);
        let mut v = Vec::new();
        let mut t = good.clone();
        t.hyper["root_iters"] = serde_json::json!(0);
        v.push(("root_iters 0".to_string(), t));
        let mut t = good.clone();
        t.hyper["root_fallbacks"] = serde_json::json!([0, 0]);
        v.push(("root_fallbacks of the wrong length".to_string(), t));
        let mut t = good.clone();
        t.hyper["root_fallbacks"] = serde_json::json!([0, 0, 0, 1u64 << 25]);
        v.push(("root_fallbacks above 2^24".to_string(), t));
        v
    };
    refusals(&f, &asgo_x(), &AsgoConfig::default(), 2, &extra, true);
}

fn dasgo_make(c: &DasgoConfig, be: Be) -> Opt {
    let mut rng = TestRng::new(25);
    let mut o = match be {
        Be::Gpu => Dasgo::gpu(&gctx(), c.clone()).unwrap(),
        Be::Cpu => Dasgo::cpu(c.clone()).unwrap(),
    };
    for (i, s) in MAT_SHAPES.iter().enumerate() {
        o.add_param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 0.5), s).unwrap();
    }
    Box::new(o)
}

fn dasgo_x() -> DasgoConfig {
    DasgoConfig { lr: 0.01, momentum: 0.8, beta2: 0.9, eps: 1e-6, weight_decay: 0.05 }
}

#[test]
fn qa_dasgo_config_change_schedule_skips_refusals() {
    let feed = shapes_feed(&MAT_SHAPES);
    let f = Fam { name: "dasgo", make: &dasgo_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    config_change(&f, &dasgo_x(), &DasgoConfig::default(), (3, 3));
    config_change(&f, &DasgoConfig { eps: 1e-2, lr: 0.02, ..DasgoConfig::default() }, &dasgo_x(), (2, 3));
    let before = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.003).unwrap();
        o.set_weight_decay(GroupId(0), 0.3).unwrap();
    };
    let after = |o: &mut dyn Stepper| o.set_lr(GroupId(0), 0.03).unwrap();
    schedule(&f, &dasgo_x(), &DasgoConfig::default(), (3, 3), &before, &after);
    skips(&f, &dasgo_x(), &DasgoConfig::default(), (3, 3));
    let extra = |be: Be| {
        let mut t = snap_of(&f, &dasgo_x(), be, 2);
        t.hyper["eps"] = serde_json::json!(0.0);
        vec![("eps 0".to_string(), t)]
    };
    refusals(&f, &dasgo_x(), &DasgoConfig::default(), 2, &extra, true);
}

// ---------------------------------------------------------------------------------------------
// OASIS / SANIA
// ---------------------------------------------------------------------------------------------

fn flat_params() -> Vec<(String, Vec<f32>, Vec<usize>)> {
    let mut rng = TestRng::new(26);
    [("a", vec![6]), ("b", vec![2, 3]), ("c", vec![4])]
        .into_iter()
        .map(|(n, s)| (n.to_string(), rng.uniforms(s.iter().product(), 0.5), s))
        .collect()
}

fn flat_make(c: &FlatAlgorithm, be: Be) -> Opt {
    match be {
        Be::Gpu => Box::new(FlatOptimizer::new(&gctx(), c.clone(), &flat_params()).unwrap()),
        Be::Cpu => Box::new(FlatOptimizer::cpu(c.clone(), &flat_params()).unwrap()),
    }
}

fn flat_feed(o: &mut dyn Stepper, k: usize, oasis: bool) {
    for (i, n) in [6, 6, 4].into_iter().enumerate() {
        o.write_grad(ParamId(i), &gvec(k, i, n)).unwrap();
        if oasis {
            let h: Vec<f32> = gvec(k, 100 + i, n).iter().map(|v| v.abs() + 0.5).collect();
            o.write_hess_diag(ParamId(i), &h).unwrap();
        }
    }
    if !oasis {
        o.write_loss(0.5 + 0.1 * k as f32).unwrap();
    }
}

#[test]
fn qa_oasis_config_change_schedule_skips_refusals() {
    let feed = |o: &mut dyn Stepper, k: usize| flat_feed(o, k, true);
    let f = Fam { name: "oasis", make: &flat_make, feed: &feed, tol: 2e-4, backends: BOTH, skips: true };
    let x = FlatAlgorithm::Oasis(OasisConfig { weight_decay: 0.01, ..OasisConfig::new(0.1, 0.9, 0.05) });
    let y = FlatAlgorithm::Oasis(OasisConfig { adaptive: false, ..OasisConfig::new(1.0, 0.99, 0.5) });
    config_change(&f, &x, &y, (3, 3));
    config_change(
        &f,
        &FlatAlgorithm::Oasis(OasisConfig { adaptive: false, ..OasisConfig::new(0.2, 0.5, 0.8) }),
        &x,
        (2, 3),
    );
    let before = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.03).unwrap();
        o.set_weight_decay(GroupId(0), 0.2).unwrap();
    };
    let after = |o: &mut dyn Stepper| o.set_weight_decay(GroupId(0), 0.5).unwrap();
    schedule(&f, &x, &y, (3, 3), &before, &after);
    skips(&f, &x, &y, (3, 3));
    let extra = |be: Be| {
        let good = snap_of(&f, &x, be, 2);
        let mut t = good.clone();
        t.hyper.as_object_mut().unwrap().remove("beta2");
        let mut u = good.clone();
        u.hyper["hess_floor"] = serde_json::json!(0.0);
        let sania = FlatAlgorithm::Sania(SaniaConfig::default());
        let sfeed = |o: &mut dyn Stepper, k: usize| flat_feed(o, k, false);
        let sf = Fam { name: "sania", make: &flat_make, feed: &sfeed, tol: 0.0, backends: BOTH, skips: true };
        vec![
            ("beta2 missing (required)".to_string(), t),
            ("hess_floor 0".to_string(), u),
            ("a SANIA checkpoint".to_string(), snap_of(&sf, &sania, be, 2)),
        ]
    };
    refusals(&f, &x, &y, 2, &extra, true);
}

#[test]
fn qa_sania_config_change_schedule_skips_refusals() {
    let feed = |o: &mut dyn Stepper, k: usize| flat_feed(o, k, false);
    let f = Fam { name: "sania", make: &flat_make, feed: &feed, tol: 2e-4, backends: BOTH, skips: true };
    let x = FlatAlgorithm::Sania(SaniaConfig {
        lr: 0.5,
        beta2: 0.9,
        eps: 1e-3,
        weight_decay: 0.01,
        sqrt_precond: true,
        preconditioner: SaniaPreconditioner::AdagradSqr,
        variant: SaniaVariant::Psps,
    });
    let y = FlatAlgorithm::Sania(SaniaConfig::default());
    config_change(&f, &x, &y, (3, 3));
    let x2 = FlatAlgorithm::Sania(SaniaConfig { eps: 0.1, lr: 0.3, ..SaniaConfig::default() });
    config_change(&f, &x2, &x, (2, 3));
    let before = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.1).unwrap();
        o.set_weight_decay(GroupId(0), 0.2).unwrap();
    };
    let after = |o: &mut dyn Stepper| o.set_lr(GroupId(0), 0.9).unwrap();
    schedule(&f, &x, &y, (3, 3), &before, &after);
    skips(&f, &x, &y, (3, 3));
    let extra = |be: Be| {
        let mut t = snap_of(&f, &x, be, 2);
        t.hyper["eps"] = serde_json::json!(0.0);
        let mut u = snap_of(&f, &x, be, 2);
        u.hyper["preconditioner"] = serde_json::json!("shampoo");
        vec![("eps 0".to_string(), t), ("an unknown preconditioner".to_string(), u)]
    };
    refusals(&f, &x, &y, 2, &extra, true);
}

// Shampoo
// ---------------------------------------------------------------------------------------------

const SHAMPOO_SHAPES: [&[usize]; 3] = [&[6, 5], &[4, 7], &[5]];

fn shampoo_on<O: MatOps + 'static>(ops: O, c: &ShampooConfig) -> Opt {
    let mut s = Shampoo::new(ops, c.clone()).unwrap();
    let mut rng = TestRng::new(27);
    for sh in SHAMPOO_SHAPES {
        s.add_param(&rng.normals(sh.iter().product(), 1.0), sh).unwrap();
    }
    Box::new(s)
}

fn shampoo_make(c: &ShampooConfig, be: Be) -> Opt {
    match be {
        Be::Gpu => shampoo_on(GpuMats::new(&gctx()).unwrap(), c),
        Be::Cpu => shampoo_on(CpuMats::default(), c),
    }
}

fn shampoo_x(block_size: usize) -> ShampooConfig {
    ShampooConfig {
        lr: 0.02,
        beta1: 0.8,
        beta2: 0.99,
        weight_decay: 0.01,
        decoupled_weight_decay: false,
        block_size,
        precondition_frequency: 2,
        start_preconditioning_step: 2,
        graft: Graft::Rmsprop,
        matrix_eps: 1e-3,
        diag_eps: 1e-8,
        root_iters: 50,
        nesterov: false,
        best_effort_shape_interpretation: true,
        merge_small_dims_block_size: 16,
        skip_preconditioning_dim_size_gt: 64,
        skip_preconditioning_rank_lt: 1,
        statistics_compute_steps: 2,
        exponent_override: 4,
        moving_average_for_momentum: true,
        relative_matrix_epsilon: true,
        clip_by_scaled_gradient_norm: Some(3.0),
        inverse_failure_threshold: 0.2,
    }
}

/// The defaults but for X's layout (which a checkpoint must match).
fn shampoo_y(block_size: usize) -> ShampooConfig {
    let x = shampoo_x(block_size);
    ShampooConfig {
        block_size,
        best_effort_shape_interpretation: x.best_effort_shape_interpretation,
        merge_small_dims_block_size: x.merge_small_dims_block_size,
        skip_preconditioning_dim_size_gt: x.skip_preconditioning_dim_size_gt,
        skip_preconditioning_rank_lt: x.skip_preconditioning_rank_lt,
        ..ShampooConfig::default()
    }
}

#[test]
fn qa_shampoo_config_change_schedule_skips_refusals() {
    let feed = shapes_feed(&SHAMPOO_SHAPES);
    let f = Fam { name: "shampoo", make: &shampoo_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    for bs in [4, 1024] {
        let x = shampoo_x(bs);
        // Everything but the layout (block size, merging, skipping: refused) differs, matrix_eps (the
        // initial statistics) included.
        let y = shampoo_y(bs);
        config_change(&f, &x, &y, (3, 3));
        let x2 =
            ShampooConfig { graft: Graft::Sgd, nesterov: true, lr: 0.01, start_preconditioning_step: 4, ..y.clone() };
        config_change(&f, &x2, &x, (2, 4));
        skips(&f, &x, &y, (3, 3));
    }
    let before = |o: &mut dyn Stepper| {
        o.set_lr(GroupId(0), 0.005).unwrap();
        o.set_weight_decay(GroupId(0), 0.3).unwrap();
    };
    let after = |o: &mut dyn Stepper| o.set_lr(GroupId(0), 0.08).unwrap();
    schedule(&f, &shampoo_x(4), &shampoo_y(4), (3, 3), &before, &after);
    let x = shampoo_x(4);
    let y = shampoo_y(4);
    let extra = |be: Be| {
        let good = snap_of(&f, &x, be, 2);
        let mut v = vec![("another block size".to_string(), snap_of(&f, &shampoo_x(8), be, 2))];
        let merged = ShampooConfig { merge_small_dims_block_size: 64, ..shampoo_x(4) };
        v.push(("another merge size".to_string(), snap_of(&f, &merged, be, 2)));
        let mut t = good.clone();
        t.hyper["root_failures"] = serde_json::json!("many");
        v.push(("root_failures not a count".to_string(), t));
        let mut t = good.clone();
        t.hyper["block_size"] = serde_json::json!(0);
        v.push(("block_size 0".to_string(), t));
        let mut t = good.clone();
        t.hyper["beta2"] = serde_json::json!(1.5);
        v.push(("beta2 1.5".to_string(), t));
        v
    };
    refusals(&f, &x, &y, 2, &extra, true);
}

// ---------------------------------------------------------------------------------------------
// Distributed Lion (GPU only; not a Stepper: a thin adapter, worker w = ParamId(w) for gradients)
// ---------------------------------------------------------------------------------------------

struct DlionStepper {
    d: DistributedLion,
    metas: Vec<ParamMeta>,
}

impl Stepper for DlionStepper {
    fn step(&mut self) -> Result<()> {
        self.d.step()
    }
    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        self.d.write_grad(id.0, grad)
    }
    fn write_param(&mut self, _: ParamId, data: &[f32]) -> Result<()> {
        self.d.write_param(data)
    }
    fn read_param(&mut self, _: ParamId) -> Result<Vec<f32>> {
        self.d.read_param()
    }
    fn read_state(&mut self, _: ParamId, state: &str) -> Result<Vec<f32>> {
        let w: usize = state.trim_start_matches('m').parse().map_err(|_| Error::Invalid(state.into()))?;
        self.d.read_momentum(w)
    }
    fn step_count(&mut self) -> Result<u64> {
        Ok(self.d.step_count())
    }
    fn set_lr(&mut self, _: GroupId, lr: f64) -> Result<()> {
        self.d.set_lr(lr)
    }
    fn set_weight_decay(&mut self, _: GroupId, _: f64) -> Result<()> {
        Err(Error::Invalid("DistributedLion has no set_weight_decay".into()))
    }
    fn snapshot(&mut self) -> Result<Snapshot> {
        self.d.snapshot()
    }
    fn restore(&mut self, s: Snapshot) -> Result<()> {
        self.d.restore(s)
    }
    fn params(&self) -> &[ParamMeta] {
        &self.metas
    }
}

const DLION_N: usize = 70;
const DLION_WORKERS: usize = 3;

fn dlion_make(c: &DistributedLionConfig, _: Be) -> Opt {
    let init = TestRng::new(28).uniforms(DLION_N, 0.5);
    let d = DistributedLion::new(&gctx(), c.clone(), &init, DLION_WORKERS).unwrap();
    let metas = d.snapshot().unwrap().params;
    Box::new(DlionStepper { d, metas })
}

fn dlion_feed(o: &mut dyn Stepper, k: usize) {
    for w in 0..DLION_WORKERS {
        o.write_grad(ParamId(w), &gvec(k, w, DLION_N)).unwrap();
    }
}

#[test]
fn qa_distributed_lion_config_change_schedule_refusals() {
    let f = Fam {
        name: "distributed_lion",
        make: &dlion_make,
        feed: &dlion_feed,
        tol: 1e-5,
        backends: GPU_ONLY,
        skips: false,
    };
    for variant in [Aggregation::Mavo, Aggregation::Avg] {
        let x = DistributedLionConfig { lr: 1e-2, beta1: 0.5, beta2: 0.8, weight_decay: 0.1, variant };
        let y = DistributedLionConfig { variant, ..DistributedLionConfig::default() };
        config_change(&f, &x, &y, (3, 3));
        let before = |o: &mut dyn Stepper| o.set_lr(GroupId(0), 3e-3).unwrap();
        let after = |o: &mut dyn Stepper| o.set_lr(GroupId(0), 5e-2).unwrap();
        schedule(&f, &x, &y, (3, 3), &before, &after);
        let extra = |be: Be| {
            let other = if variant == Aggregation::Mavo { Aggregation::Avg } else { Aggregation::Mavo };
            let mut v = vec![(
                "the other variant".to_string(),
                snap_of(&f, &DistributedLionConfig { variant: other, ..x.clone() }, be, 2),
            )];
            let mut t = snap_of(&f, &x, be, 2);
            t.states[0].pop();
            v.push(("one worker fewer".to_string(), t));
            let mut t = snap_of(&f, &x, be, 2);
            t.values[0][3] = f32::NAN;
            v.push(("a NaN parameter".to_string(), t));
            let mut t = snap_of(&f, &x, be, 2);
            t.states[0][1].1[5] = f32::INFINITY;
            v.push(("an infinite momentum".to_string(), t));
            v
        };
        refusals(&f, &x, &y, 2, &extra, true);
    }
}

// ---------------------------------------------------------------------------------------------
// Probes beyond the families' own checks
// ---------------------------------------------------------------------------------------------

/// A checkpoint's group values (lr, weight_decay, base_lr) reach the update as they are: values that
/// `OptimizerBuilder::group` and `set_lr` / `set_weight_decay` refuse (negative, NaN, a zero
/// base_lr that AdaBound divides by) must be refused by a restore too, changing nothing.
fn invalid_group_values(f: &Fam<Ew>, x: &Ew, be: Be, cases: &[(&str, usize, [f64; 3])]) -> Vec<String> {
    let mut accepted = Vec::new();
    for &(name, g, [lr, wd, base]) in cases {
        let mut s = snap_of(f, x, be, 2);
        s.groups[g].lr = lr;
        s.groups[g].weight_decay = wd;
        s.groups[g].base_lr = base;
        let mut victim = (f.make)(x, be);
        run(f, victim.as_mut(), 0..2);
        let before = victim.snapshot().unwrap();
        if victim.restore(s).is_err() {
            same(&format!("[{be:?}] {name}: refused and changed"), &victim.snapshot().unwrap(), &before);
            continue;
        }
        run(f, victim.as_mut(), 2..3);
        let after = victim.snapshot().unwrap();
        let finite = after.values.iter().flatten().all(|v| v.is_finite());
        let moved = max_rel(&after.values, &before.values);
        accepted.push(format!(
            "[{be:?}] {} {name}: accepted; after one step parameters finite={finite}, moved {moved:e}",
            f.name
        ));
    }
    accepted
}

// Found 2026-11-29 (fixed: Algorithm::check_group in Snapshot::check_fits): elementwise restore (GPU and CPU) accepted a checkpoint whose groups hold a negative or NaN
// lr, a negative weight decay or (AdaBound) a zero base_lr, values the builder and set_lr refuse; the
// next step then ascends or writes NaN/Inf into the parameters. Snapshot::check_fits checks only the
// group count. The Muon aux AdamW's groups go through the same check.
#[test]
fn qa_restore_refuses_invalid_group_values() {
    let mut accepted = Vec::new();
    let feed = |o: &mut dyn Stepper, k: usize| ew_feed(o, k, false);
    for (name, alg) in [("adamw", Algorithm::from(AdamW::default())), ("adabound", AdaBound::default().into())] {
        let f = Fam { name, make: &ew_make, feed: &feed, tol: 1e-5, backends: BOTH, skips: true };
        let x = ew(alg, false);
        let mut cases = vec![
            ("group 0 lr -0.01", 0, [-0.01, 0.0, 1e-3]),
            ("group 0 lr NaN", 0, [f64::NAN, 0.0, 1e-3]),
            ("group 1 weight_decay -5", 1, [5e-4, -5.0, 5e-4]),
        ];
        // Only AdaBound divides by base_lr (elsewhere 0, an lr of 0 at build time, is harmless).
        if name == "adabound" {
            cases.push(("group 0 base_lr 0", 0, [1e-3, 0.0, 0.0]));
        }
        for be in [Be::Gpu, Be::Cpu] {
            accepted.extend(invalid_group_values(&f, &x, be, &cases));
        }
    }
    // Muon: the aux AdamW's group (groups[1]) with a negative lr, through a file.
    let feed = shapes_feed(&MUON_SHAPES);
    let f = Fam { name: "muon", make: &muon_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    for be in [Be::Gpu, Be::Cpu] {
        let mut s = snap_of(&f, &muon_x(), be, 2);
        s.groups[1].lr = -0.05;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        s.save(&p).unwrap();
        let mut victim = (f.make)(&muon_x(), be);
        if victim.load(&p).is_ok() {
            accepted.push(format!("[{be:?}] muon: aux group lr -0.05 accepted from a file"));
        }
    }
    assert!(accepted.is_empty(), "{} invalid group values accepted:\n{}", accepted.len(), accepted.join("\n"));
}

/// The byte right after `pat` in the safetensors header (JSON), changed to another digit; None when
/// `pat` is not in the header or not followed by a digit.
fn tamper_header(bytes: &[u8], pat: &str) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = &bytes[8..8 + n];
    let at = 8 + header.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let mut out = bytes.to_vec();
    if !out[at].is_ascii_digit() {
        return None;
    }
    out[at] = if out[at] == b'9' { b'1' } else { out[at] + 1 };
    Some(out)
}

// Found 2026-11-29 (fixed: meta_crc32): the checkpoint's CRC-32 covered the tensor bytes only (README: "a CRC-32 of all tensor
// bytes"; checkpoint.rs: "so a flipped byte anywhere is caught"): a flipped digit in the metadata —
// the step count, the skip count, a hyperparameter — loads without error and changes the run
// (bias corrections from the wrong step, another lr). Seen on AdamW (GPU, CPU) and Hybrid-AuON
// (GPU); every optimizer writes this one format.
#[test]
fn qa_tampered_metadata_is_detected() {
    let mut accepted = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    // `o` and `twin` are built alike; the good file loads into the twin, each tampered one into `o`,
    // and one more step shows what the tampering does to the run.
    let check = |label: &str,
                 make: &dyn Fn() -> Opt,
                 feed: &dyn Fn(&mut dyn Stepper, usize),
                 good: &[u8],
                 accepted: &mut Vec<String>| {
        for pat in ["\"step\":\"", "\"skipped\":\"", "\\\"lr\\\":", "\\\"beta1\\\":0."] {
            let Some(bad) = tamper_header(good, pat) else { continue };
            let (mut o, mut twin) = (make(), make());
            std::fs::write(&path, good).unwrap();
            twin.load(&path).unwrap();
            std::fs::write(&path, &bad).unwrap();
            if o.load(&path).is_ok() {
                let d = differences(&o.snapshot().unwrap(), &twin.snapshot().unwrap());
                for x in [&mut o, &mut twin] {
                    feed(x.as_mut(), 9);
                    x.step().unwrap();
                }
                let r = max_rel(&o.snapshot().unwrap().values, &twin.snapshot().unwrap().values);
                accepted.push(format!("{label}: a digit after {pat} changed: loaded ({d}); one step later parameters differ by {r:e} (relative)"));
            }
        }
    };
    let feed = |o: &mut dyn Stepper, k: usize| ew_feed(o, k, false);
    let f = Fam { name: "adamw", make: &ew_make, feed: &feed, tol: 1e-5, backends: BOTH, skips: true };
    let x = ew(AdamW { lr: 1e-2, beta1: 0.8, ..AdamW::default() }, true);
    for be in [Be::Gpu, Be::Cpu] {
        let mut o = (f.make)(&x, be);
        run(&f, o.as_mut(), 0..2);
        o.save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        check(&format!("[{be:?}] adamw"), &|| (f.make)(&x, be), &feed, &good, &mut accepted);
    }
    let feed = shapes_feed(&AUON_SHAPES);
    let f = Fam { name: "auon", make: &auon_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    let x = AuonC { c: auon_x(), hybrid: true };
    let mut o = (f.make)(&x, Be::Gpu);
    run(&f, o.as_mut(), 0..2);
    o.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    check("[Gpu] hybrid_auon", &|| (f.make)(&x, Be::Gpu), &feed, &good, &mut accepted);
    assert!(accepted.is_empty(), "{} tampered files loaded:\n{}", accepted.len(), accepted.join("\n"));
}

/// A checkpoint moves between contexts whose binding caps split the arenas / stacks differently
/// (each parameter then sits at another (segment or stack, index)): X saved on one layout, loaded
/// into a Y-built optimizer on the other, continued; compared with the straight run on the first
/// (GPU vs GPU: within the family's GPU-CPU tolerance, and reported when not bit-identical).
fn across_layouts<C: Debug>(f: &Fam<C>, x: &C, y: &C, small: &gpuopt::Context, (a, b): (usize, usize)) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.safetensors");
    let mut notes = Vec::new();
    for (from, to) in [(Some(small), None), (None, Some(small))] {
        let want = on_ctx(from, || {
            let mut o = (f.make)(x, Be::Gpu);
            run(f, o.as_mut(), 0..a + b);
            let w = o.snapshot().unwrap();
            let mut o = (f.make)(x, Be::Gpu);
            run(f, o.as_mut(), 0..a);
            o.save(&path).unwrap();
            w
        });
        let got = on_ctx(to, || {
            let mut o = (f.make)(y, Be::Gpu);
            o.load(&path).unwrap();
            run(f, o.as_mut(), a..a + b);
            o.snapshot().unwrap()
        });
        let what = format!(
            "{} {} -> {}",
            f.name,
            if from.is_some() { "small" } else { "default" },
            if to.is_some() { "small" } else { "default" }
        );
        let d = differences(&got, &want);
        if !d.is_empty() {
            notes.push(format!("{what}: not bit-identical: {d}"));
        }
        close(&what, &got, &want, f.tol);
    }
    notes
}

#[test]
fn qa_checkpoints_move_between_stack_and_segment_layouts() {
    let mut notes = Vec::new();
    // Arenas: 128 elements per segment (our three tensors need 192 aligned): several segments.
    let seg = common::ctx_with(gpuopt::ContextOptions { max_binding_bytes: Some(512), ..Default::default() });
    for (xa, ya) in [
        (
            Algorithm::from(AdamW { lr: 1e-2, amsgrad: true, ..AdamW::default() }),
            Algorithm::from(AdamW { amsgrad: true, ..AdamW::default() }),
        ),
        (Mars { lr: 1e-2, gamma: 0.05, ..Mars::default() }.into(), Mars::default().into()),
        (
            Lion { lr: 3e-3, k_map: KMap::Lp, k_p: Some(3.0), ..Lion::default() }.into(),
            Lion { k_map: KMap::L2, ..Lion::default() }.into(),
        ),
    ] {
        let feed = |o: &mut dyn Stepper, k: usize| ew_feed(o, k, false);
        let f = Fam { name: "elementwise", make: &ew_make, feed: &feed, tol: 1e-5, backends: BOTH, skips: true };
        let segments = on_ctx(Some(&seg), || {
            let mut b = OptimizerBuilder::new(xa.clone());
            for (i, s) in EW_SHAPES.iter().enumerate() {
                b.param(&format!("w{i}"), &vec![0.0; s.iter().product()], s, b.default_group()).unwrap();
            }
            b.build(&gctx()).unwrap().segments()
        });
        assert!(segments > 1, "the small context should split the arena ({segments} segment)");
        notes.extend(across_layouts(&f, &ew(xa, true), &ew(ya, false), &seg, (3, 3)));
    }
    // Stacks: 64 floats per binding (the smallest cap a context takes): the equal 6x6 (Muon, AuON,
    // REG) and 5x7 (ASGO, DASGO) matrices each in a stack of their own.
    let small = common::ctx_with(gpuopt::ContextOptions { max_binding_bytes: Some(256), ..Default::default() });
    let split = |ctx: &gpuopt::Context| {
        let mut b = MuonBuilder::new(MuonConfig::default());
        let mut a = Asgo::gpu(ctx, AsgoConfig::default()).unwrap();
        for (i, s) in MUON_SHAPES[..4].iter().enumerate() {
            b.param(&format!("p{i}"), &vec![0.1; s.iter().product()], s).unwrap();
        }
        for (i, s) in MAT_SHAPES.iter().enumerate() {
            a.add_param(&format!("p{i}"), &vec![0.1; s.iter().product()], s).unwrap();
        }
        a.read_param(ParamId(0)).unwrap(); // settles the stacks
        (b.build(ctx).unwrap().shape_groups(), a.chains())
    };
    assert_eq!(split(&common::ctx()), (3, 3));
    assert_eq!(split(&small), (4, 4), "the small context puts every matrix in a stack of its own");
    let feed = shapes_feed(&MUON_SHAPES);
    let f = Fam { name: "muon", make: &muon_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    notes.extend(across_layouts(&f, &muon_x(), &muon_y(), &small, (3, 3)));
    let feed = shapes_feed(&AUON_SHAPES);
    let f = Fam { name: "auon", make: &auon_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    for hybrid in [false, true] {
        notes.extend(across_layouts(
            &f,
            &AuonC { c: auon_x(), hybrid },
            &AuonC { c: AuonConfig::default(), hybrid },
            &small,
            (3, 3),
        ));
    }
    let feed = shapes_feed(&REG_SHAPES);
    let f = Fam { name: "reg", make: &reg_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    notes.extend(across_layouts(&f, &reg_x(), &RegConfig::default(), &small, (3, 3)));
    let feed = shapes_feed(&MAT_SHAPES);
    let f = Fam { name: "asgo", make: &asgo_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    notes.extend(across_layouts(&f, &asgo_x(), &AsgoConfig::default(), &small, (3, 3)));
    let f = Fam { name: "dasgo", make: &dasgo_make, feed: &feed, tol: 1e-4, backends: BOTH, skips: true };
    notes.extend(across_layouts(&f, &dasgo_x(), &DasgoConfig::default(), &small, (3, 3)));
    for n in &notes {
        eprintln!("{n}");
    }
}
