//! GPU-vs-CPU parity: run an optimizer on the GPU and on the CPU reference with the same random
//! gradients (plus edge values), compare every step, and report the worst error against a tolerance
//! derived from the arithmetic (see [`tolerance`]).

use crate::error::Result;
use crate::optim::algorithm::{AdaHessian, Sophia, SophiaVariant};
use crate::optim::{
    AdEMAMix, AdaBound, AdaMomentum, AdamW, Algorithm, Ano, GroupOptions, KMap, Lion, Mars, MarsVariant,
    OptimizerBuilder, Sgd, SignSgd, Signum, Stepper,
};
use crate::Context;

/// SplitMix64: a small, well-known generator for test data (not the Philox of the Hutchinson family).
#[derive(Clone, Debug)]
pub struct TestRng(u64);

impl TestRng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// `n` values uniform in [−scale, scale) (cheap enough for tensors of 16M elements).
    pub fn uniforms(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.next_u64() >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0) * scale).collect()
    }

    /// `n` normals times `scale`.
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

/// The edge values every parity run injects: zeros, ±tiny (normal f32), ±huge.
pub const EDGES: [f32; 5] = [0.0, 1e-30, -1e-30, 1e30, -1e30];

/// Every elementwise optimizer, with non-default hyperparameters (and each variant: Nesterov, SGDW,
/// AMSGrad, AMSBound, decoupled AdaBound, AdEMAMix warm-up, MARS-Lion).
pub fn test_algorithms() -> Vec<(String, Algorithm)> {
    let v: Vec<(&str, Algorithm)> = vec![
        ("sgd", Sgd { lr: 0.05, weight_decay: 0.01, ..Sgd::default() }.into()),
        ("sgd_momentum", Sgd { lr: 0.02, momentum: 0.8, dampening: 0.1, weight_decay: 0.02, ..Sgd::default() }.into()),
        (
            "sgd_nesterov_w",
            Sgd {
                lr: 0.02,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.05,
                weight_decouple: true,
                ..Sgd::default()
            }
            .into(),
        ),
        ("signsgd", SignSgd { lr: 0.003, weight_decay: 0.1 }.into()),
        ("signum", Signum { lr: 0.002, momentum: 0.85, weight_decay: 0.1 }.into()),
        ("lion", Lion { lr: 3e-4, beta1: 0.95, beta2: 0.98, weight_decay: 0.3, ..Lion::default() }.into()),
        ("lion_k_l2", Lion { lr: 0.05, beta1: 0.8, weight_decay: 0.1, k_map: KMap::L2, ..Lion::default() }.into()),
        (
            "lion_k_lp",
            Lion { lr: 0.05, beta2: 0.95, weight_decay: 0.1, k_map: KMap::Lp, k_p: Some(1.5), ..Lion::default() }
                .into(),
        ),
        // Scales inside the gradients' range (1e-3 to 3), so both the linear and the saturated parts run.
        (
            "lion_k_huber",
            Lion { lr: 1e-3, weight_decay: 0.2, k_map: KMap::Huber, k_scale: 0.05, ..Lion::default() }.into(),
        ),
        (
            "lion_k_tanh",
            Lion { lr: 1e-3, weight_decay: 0.2, k_map: KMap::Tanh, k_scale: 20.0, ..Lion::default() }.into(),
        ),
        (
            "lion_k_relativistic",
            Lion { lr: 1e-3, weight_decay: 0.2, k_map: KMap::Relativistic, k_scale: 0.1, ..Lion::default() }.into(),
        ),
        ("ano", Ano { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-6, weight_decay: 0.05 }.into()),
        ("anolog", Algorithm::Anolog(Ano { lr: 1e-3, beta2: 0.97, eps: 1e-7, weight_decay: 0.05, ..Ano::default() })),
        ("adamw", AdamW { lr: 3e-3, beta1: 0.85, beta2: 0.99, eps: 1e-7, weight_decay: 0.05, amsgrad: false }.into()),
        (
            "adamw_amsgrad",
            AdamW { lr: 2e-3, beta1: 0.9, beta2: 0.95, eps: 1e-6, weight_decay: 0.1, amsgrad: true }.into(),
        ),
        (
            "adabound",
            AdaBound { lr: 2e-3, final_lr: 0.05, gamma: 0.01, weight_decay: 1e-3, ..AdaBound::default() }.into(),
        ),
        (
            "amsbound_w",
            AdaBound {
                lr: 1e-3,
                beta1: 0.8,
                final_lr: 0.2,
                amsbound: true,
                weight_decouple: true,
                weight_decay: 0.01,
                ..AdaBound::default()
            }
            .into(),
        ),
        (
            "adamomentum",
            AdaMomentum { lr: 2e-3, beta1: 0.8, beta2: 0.99, eps: 1e-7, weight_decay: 0.02, ..AdaMomentum::default() }
                .into(),
        ),
        // β2 = 0.99: SGD steps while N_sma < 5 (t ≤ 5), rectified after.
        (
            "adamomentum_rectified",
            AdaMomentum {
                lr: 2e-3,
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-7,
                weight_decay: 0.02,
                rectify: true,
                ..AdaMomentum::default()
            }
            .into(),
        ),
        (
            "ademamix",
            AdEMAMix {
                lr: 2e-3,
                alpha: 5.0,
                beta3: 0.999,
                weight_decay: 0.1,
                t_alpha_beta3: 8.0,
                ..AdEMAMix::default()
            }
            .into(),
        ),
        ("mars", Mars { lr: 2e-3, gamma: 0.05, weight_decay: 0.05, ..Mars::default() }.into()),
        (
            "mars_lion",
            Mars {
                lr: 2e-4,
                beta1: 0.9,
                gamma: 0.02,
                weight_decay: 0.1,
                variant: MarsVariant::Lion,
                ..Mars::default()
            }
            .into(),
        ),
        (
            "adahessian",
            AdaHessian { lr: 0.05, beta1: 0.85, beta2: 0.99, eps: 1e-3, weight_decay: 0.01, hessian_power: 0.5 }.into(),
        ),
        ("adahessian_k1", AdaHessian { lr: 0.1, weight_decay: 0.02, ..AdaHessian::default() }.into()),
        ("sophia", Sophia { lr: 2e-3, rho: 0.05, hess_interval: 3, ..Sophia::default() }.into()),
        (
            "sophiah",
            Sophia {
                lr: 0.01,
                rho: 0.2,
                eps: 1e-6,
                hess_interval: 2,
                variant: SophiaVariant::Sophiah,
                ..Sophia::default()
            }
            .into(),
        ),
    ];
    v.into_iter().map(|(n, a)| (n.to_string(), a)).collect()
}

/// Whether the update applies `sign` (so a coordinate may legitimately flip where its argument is
/// within rounding of 0, ALGORITHMS.md §2.8).
pub fn sign_based(a: &Algorithm) -> bool {
    matches!(a, Algorithm::SignSgd(_) | Algorithm::Signum(_) | Algorithm::Ano(_) | Algorithm::Anolog(_))
        || matches!(a, Algorithm::Mars(m) if m.variant == MarsVariant::Lion)
        || matches!(a, Algorithm::Lion(l) if l.k_map == KMap::Sign)
}

/// For updates that may jump between their bounds where an argument is within rounding of a
/// threshold, the largest per-step update in units of lr: 1 for the sign-based ones, and for Sophia,
/// whose ratio m / max(ρ·h, ε) divides by ε = 1e-15 where h ≤ 0, so that a rounding-level difference
/// in m (an FMA contraction on one side) can move the clipped value across its whole range: 1 for
/// Liuhong99's form (clipped at 1), ρ for SophiaH (clipped at ρ). Seen on an H200: 11 of 16.7M
/// coordinates over 12 steps. `None` for updates that are continuous in their inputs.
pub fn jump_bound(a: &Algorithm) -> Option<f32> {
    match a {
        _ if sign_based(a) => Some(1.0),
        Algorithm::Sophia(c) if c.variant == SophiaVariant::Sophiah => Some(c.rho as f32),
        Algorithm::Sophia(_) => Some(1.0),
        _ => None,
    }
}

/// The tolerance for one element after `t` steps.
///
/// Each elementwise update is at most ~16 f32 operations, each within 2.5 ulp in WGSL (division and
/// sqrt are not correctly rounded; FMA contraction may differ), so one step changes p by its update
/// Δ with a relative error ≤ 16·2.5·ε ≈ 40ε, and rounds p itself (1 ulp). Errors in the moment
/// estimates are damped by β < 1, so over t steps the difference grows at most linearly:
/// `tol = 40·ε·t·(|p| + max|Δ|)`, with max|Δ| the largest per-step change of that tensor on the CPU.
///
/// ```
/// let tol = gpuopt::parity::tolerance(12, 1.0, 1e-3);
/// assert!(tol > 0.0 && tol < 1e-4);
/// ```
pub fn tolerance(t: usize, p: f32, max_step: f32) -> f32 {
    40.0 * f32::EPSILON * t as f32 * (p.abs() + max_step)
}

/// One comparison result.
#[derive(Clone, Debug)]
pub struct Report {
    /// Test-case name.
    pub name: String,
    /// Tensor size.
    pub size: usize,
    /// Steps compared.
    pub steps: usize,
    /// Largest |gpu − cpu| over all steps (finite elements).
    pub max_abs: f32,
    /// Largest |gpu − cpu| / |cpu| over elements with |cpu| > 0.
    pub max_rel: f32,
    /// Largest error / tolerance.
    pub worst: f32,
    /// Elements over tolerance (sign-based optimizers may have a few, see [`sign_based`]).
    pub mismatches: usize,
    /// How many are allowed.
    pub budget: usize,
    /// Verdict.
    pub pass: bool,
}

/// Accumulates one tensor's comparison over steps.
#[derive(Clone, Debug)]
struct Tracker {
    report: Report,
    prev: Vec<f32>,
    max_step: f32,
    flip: f32,
    over: Vec<bool>,
}

impl Tracker {
    fn new(name: &str, init: &[f32], flip: f32, may_jump: bool) -> Self {
        let n = init.len();
        Tracker {
            report: Report {
                name: name.to_string(),
                size: n,
                steps: 0,
                max_abs: 0.0,
                max_rel: 0.0,
                worst: 0.0,
                mismatches: 0,
                // Jumps where an argument is within rounding of a threshold (see `jump_bound`): at
                // most 1 in 1000.
                budget: if may_jump { n.div_ceil(1000) } else { 0 },
                pass: true,
            },
            prev: init.to_vec(),
            max_step: 0.0,
            flip,
            over: vec![false; n],
        }
    }

    fn check(&mut self, gpu: &[f32], cpu: &[f32]) {
        let r = &mut self.report;
        r.steps += 1;
        for (&a, &b) in cpu.iter().zip(&self.prev) {
            // The largest update, ignoring elements whose value over- or underflowed.
            if a.is_finite() && b.is_finite() && (a - b).abs() < 1e20 {
                self.max_step = self.max_step.max((a - b).abs());
            }
        }
        for (i, (&x, &y)) in gpu.iter().zip(cpu).enumerate() {
            let ok = if !y.is_finite() || !x.is_finite() {
                // Overflow (g² beyond f32) must overflow alike on both sides.
                x.is_finite() == y.is_finite()
            } else {
                let err = (x - y).abs();
                let tol = tolerance(r.steps, y, self.max_step);
                r.max_abs = r.max_abs.max(err);
                if y != 0.0 {
                    r.max_rel = r.max_rel.max(err / y.abs());
                }
                if err <= tol {
                    r.worst = r.worst.max(if tol > 0.0 { err / tol } else { 0.0 });
                    true
                } else {
                    // A sign flip moves p by at most 2·lr per step for the remaining steps.
                    r.budget > 0 && err <= self.flip * r.steps as f32 + tol
                }
            };
            if !ok {
                r.worst = f32::INFINITY;
            }
            if !ok || (r.budget > 0 && (x - y).abs() > tolerance(r.steps, y, self.max_step)) {
                self.over[i] = true;
            }
        }
        r.mismatches = self.over.iter().filter(|&&o| o).count();
        r.pass = r.worst.is_finite() && r.mismatches <= r.budget;
        self.prev = cpu.to_vec();
    }
}

/// Deterministic test data: a parameter of `n` elements with edge values at every 89th element.
pub fn init_param(rng: &mut TestRng, n: usize, edges: bool) -> Vec<f32> {
    let mut p = rng.uniforms(n, 1.0);
    if edges {
        for (k, i) in (5..n).step_by(89).enumerate() {
            p[i] = EDGES[k % EDGES.len()];
        }
    }
    p
}

/// Deterministic gradients for `step`: uniforms of a per-step scale, edge values at every 97th.
pub fn grad(rng: &mut TestRng, n: usize, step: usize, edges: bool) -> Vec<f32> {
    let scale = [1.0, 1e-3, 0.1, 3.0][step % 4];
    let mut g = rng.uniforms(n, scale);
    if edges {
        for (k, i) in (3..n).step_by(97).enumerate() {
            g[i] = EDGES[(k + step) % EDGES.len()];
        }
    }
    g
}

/// Runs `algorithm` for `steps` steps over tensors of the given sizes (all in one arena, the odd ones
/// in a second group with other lr / decay) on the GPU and the CPU, comparing every step.
pub fn run(
    ctx: &Context,
    name: &str,
    algorithm: &Algorithm,
    sizes: &[usize],
    steps: usize,
    seed: u64,
    edges: bool,
) -> Result<Vec<Report>> {
    let mut rng = TestRng::new(seed);
    let mut b = OptimizerBuilder::new(algorithm.clone());
    let (lr, wd) = algorithm.lr_wd();
    let other = b.group(GroupOptions { lr: Some(lr * 0.5), weight_decay: Some(wd * 2.0) })?;
    let mut ids = Vec::new();
    let mut inits = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let init = init_param(&mut rng, n, edges);
        let group = if k % 2 == 1 { other } else { b.default_group() };
        ids.push(b.param(&format!("t{k}_{n}"), &init, &[n], group)?);
        inits.push(init);
    }
    let mut gpu = b.clone().build(ctx)?;
    let mut cpu = b.build_cpu()?;
    let jump = jump_bound(algorithm);
    let flip = 2.0 * lr as f32 * (1.0 + wd as f32) * jump.unwrap_or(0.0);
    let mut trackers: Vec<Tracker> = inits.iter().map(|i| Tracker::new(name, i, flip, jump.is_some())).collect();
    for s in 0..steps {
        for (&id, &n) in ids.iter().zip(sizes) {
            let g = grad(&mut rng, n, s, edges);
            gpu.write_grad(id, &g)?;
            cpu.write_grad(id, &g)?;
            if algorithm.needs_hessian() {
                // Hutchinson estimates can be negative; same edge values as the gradients.
                let d = grad(&mut rng, n, s + 1, edges);
                gpu.write_hess_diag(id, &d)?;
                cpu.write_hess_diag(id, &d)?;
            }
        }
        gpu.step()?;
        cpu.step()?;
        for (tr, &id) in trackers.iter_mut().zip(&ids) {
            let x = gpu.read_param(id)?;
            let y = cpu.read_param(id)?;
            tr.check(&x, &y);
        }
    }
    Ok(trackers.into_iter().map(|t| t.report).collect())
}

/// One GPU-vs-CPU comparison of a matrix kernel or a matrix optimizer (`gpuopt parity`'s second
/// table): the worst error over the case's outputs as a fraction of its tolerance.
#[derive(Clone, Debug)]
pub struct MatrixReport {
    /// Kernel or optimizer.
    pub name: String,
    /// What ran, e.g. `37x53x29 NT` or `3x 40x24, 10 steps`.
    pub case: String,
    /// The measure compared (`elementwise`: |gpu − cpu| against a bound per element; `rel. movement`:
    /// ‖gpu − cpu‖_F / ‖cpu − start‖_F; `rel. Frobenius`: ‖gpu − cpu‖_F / ‖cpu‖_F).
    pub measure: &'static str,
    /// The largest value of the measure.
    pub err: f64,
    /// Its tolerance (for `elementwise`, 1: err is already a fraction of each element's bound).
    pub tol: f64,
    /// err ≤ tol.
    pub pass: bool,
}

/// The larger error, NaN if either is (f64::max would drop it, and an all-NaN result would pass).
fn worse(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn report(name: &str, case: String, measure: &'static str, err: f64, tol: f64) -> MatrixReport {
    MatrixReport { name: name.into(), case, measure, err, tol, pass: err <= tol }
}

/// ‖x − y‖_F / ‖y − base‖_F (base = 0: relative to y).
fn rel_to(x: &[f32], y: &[f32], base: Option<&[f32]>) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let den: f64 = match base {
        Some(z) => y.iter().zip(z).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum(),
        None => y.iter().map(|a| (*a as f64).powi(2)).sum(),
    };
    (num / den.max(1e-300)).sqrt()
}

/// The matrix family on the GPU against its CPU twins, at the tolerances the test suite uses:
/// GEMM (every op combination, an addend, batches, the Gram half-product) elementwise within
/// (√k + 2)·ε·(|A|·|B|) + 2ε·|C|; NS5 within 3·s·3.4445·(√c + 2)·ε of each matrix (relative
/// Frobenius); the matrix roots within 1e-4 (relative Frobenius); Muon, AuON, Hybrid-AuON, REG,
/// ASGO and DASGO over `steps` steps on stacks of same-shape parameters within 1e-4 of the
/// movement (the loosest of their tests' bounds; they measure below 1e-5 on lavapipe). Names
/// containing `only` (if given) run.
pub fn matrix_run(ctx: &Context, steps: usize, only: Option<&str>) -> Result<Vec<MatrixReport>> {
    use crate::kernels::gemm::{gemm, GemmDesc};
    use crate::reference::gemm::{abs_product, gemm_addend};
    let wants = |name: &str| only.is_none_or(|o| name.contains(o));
    let mut rng = TestRng::new(7);
    let mut out = Vec::new();
    let eps = f32::EPSILON as f64;
    if wants("gemm") {
        let cases = [
            ((37, 53, 29), false, false, 1, 0.0),
            ((37, 53, 29), true, false, 1, 0.0),
            ((37, 53, 29), false, true, 1, 0.0),
            ((37, 53, 29), true, true, 1, 0.5),
            ((1000, 256, 300), false, false, 1, 0.0),
            ((64, 48, 40), false, true, 3, -1.0),
        ];
        for ((m, n, k), trans_a, trans_b, batch, beta) in cases {
            let desc = GemmDesc { trans_a, trans_b, batch, alpha: 1.5, beta, ..GemmDesc::new(m, n, k) };
            let (a, b, c) =
                (rng.uniforms(batch * m * k, 1.0), rng.uniforms(batch * k * n, 1.0), rng.uniforms(batch * m * n, 1.0));
            let at = |d: &[f32], r: usize, s: usize| crate::Tensor::from_slice(ctx, d, &[batch, r, s]);
            let (ga, gb, gc) = (at(&a, m, k)?, at(&b, k, n)?, at(&c, m, n)?);
            gemm(ctx, desc, &ga, &gb, &gc)?;
            let got = gc.to_vec(ctx)?;
            let (mut want, mut scale) = (Vec::new(), Vec::new());
            for z in 0..batch {
                let single = GemmDesc { batch: 1, ..desc };
                let (az, bz, cz) = (&a[z * m * k..][..m * k], &b[z * k * n..][..k * n], &c[z * m * n..][..m * n]);
                let mut w = vec![0.0; m * n];
                gemm_addend(&single, az, bz, &mut w, cz);
                want.extend(w);
                scale.extend(abs_product(&single, az, bz));
            }
            let worst = (0..got.len())
                .map(|i| {
                    let tol = ((k as f64).sqrt() + 2.0) * eps * 1.5 * scale[i] as f64
                        + 2.0 * eps * (want[i].abs() as f64 + (beta * c[i]).abs() as f64);
                    (got[i] as f64 - want[i] as f64).abs() / tol
                })
                .fold(0.0, worse);
            let ops = format!("{}{}", if trans_a { "T" } else { "N" }, if trans_b { "T" } else { "N" });
            let case = format!("{batch}x {m}x{n}x{k} {ops}, beta {beta}");
            out.push(report("gemm", case, "elementwise", worst, 1.0));
        }
    }
    if wants("gemm gram") {
        // The Gram half-product X·Xᵀ (upper tiles computed, mirrored) against the full product.
        let (m, k) = (96, 70);
        let x = rng.uniforms(m * k, 1.0);
        let desc = GemmDesc { alpha: 1.5, ..GemmDesc::gram(m, k) };
        let gx = crate::Tensor::from_slice(ctx, &x, &[m, k])?;
        let gc = crate::Tensor::zeros(ctx, &[m, m])?;
        gemm(ctx, desc, &gx, &gx, &gc)?;
        let got = gc.to_vec(ctx)?;
        let full = GemmDesc { symmetric: false, ..desc };
        let mut want = vec![0.0; m * m];
        gemm_addend(&full, &x, &x, &mut want, &vec![0.0; m * m]);
        let scale = abs_product(&full, &x, &x);
        let worst = (0..m * m)
            .map(|i| {
                let tol = ((k as f64).sqrt() + 2.0) * eps * 1.5 * scale[i] as f64 + 2.0 * eps * want[i].abs() as f64;
                (got[i] as f64 - want[i] as f64).abs() / tol
            })
            .fold(0.0, worse);
        out.push(report("gemm gram", format!("1x {m}x{m}x{k} X·Xᵀ half"), "elementwise", worst, 1.0));
    }
    if wants("newton_schulz5") {
        for (b, m, n) in [(1, 64, 96), (1, 96, 64), (3, 32, 48)] {
            let g = rng.uniforms(b * m * n, 1.0);
            let got = crate::kernels::newton_schulz::newton_schulz5(
                ctx,
                &crate::Tensor::from_slice(ctx, &g, &[b, m, n])?,
                5,
            )?;
            let want = crate::reference::newton_schulz::newton_schulz5(
                &g,
                b,
                m,
                n,
                5,
                crate::kernels::newton_schulz::NS5_COEFFICIENTS,
            );
            let worst =
                (0..b).map(|z| rel_to(&got[z * m * n..][..m * n], &want[z * m * n..][..m * n], None)).fold(0.0, worse);
            let c = m.max(n) as f64;
            let tol = 3.0 * 5.0 * 3.4445 * (c.sqrt() + 2.0) * eps;
            out.push(report("newton_schulz5", format!("{b}x {m}x{n}, 5 steps"), "rel. Frobenius", worst, tol));
        }
    }
    // `--only roots` keeps every root method.
    let root = |name: &str| wants(name) || only == Some("roots");
    out.extend(matrix_roots(ctx, &root, &mut rng)?);
    out.extend(matrix_optimizers(ctx, steps, &wants, &mut rng)?);
    Ok(out)
}

/// The roots of a batch of two SPD matrices (κ ≈ 100) by every method, GPU against CPU.
fn matrix_roots(ctx: &Context, wants: &dyn Fn(&str) -> bool, rng: &mut TestRng) -> Result<Vec<MatrixReport>> {
    use crate::kernels::roots::GpuMats;
    use crate::reference::roots::CpuMats;
    use crate::roots::{inv_root, inv_sqrt, inv_sqrt_polar_express, sqrt, InvRootOptions, MatOps, SqrtMethod};
    let (b, n) = (2, 24);
    // Eigenvalues log-spaced over [0.01, 1] in a random basis (the tests' SPD generator).
    let data: Vec<f32> =
        (0..b).flat_map(|_| crate::reference::roots::spd_matrix(n, 100.0, 1.0, rng.next_u64())).collect();
    let methods: [(&str, &str); 6] = [
        ("sqrt", "newton_schulz"),
        ("sqrt", "mtp"),
        ("sqrt", "mpa"),
        ("inv_sqrt", "newton_schulz"),
        ("inv_sqrt", "polar_express"),
        ("inv_root", "p = 4"),
    ];
    fn on(ops: &mut impl MatOps, data: &[f32], b: usize, n: usize, which: (&str, &str)) -> Result<Vec<f32>> {
        let a = ops.upload(data, b, n, n)?;
        let ns = SqrtMethod::NewtonSchulz { iters: 5, tol: None };
        let y = match which {
            ("sqrt", "newton_schulz") => sqrt(ops, a, ns)?,
            ("sqrt", "mtp") => sqrt(ops, a, SqrtMethod::Mtp { degree: 10 })?,
            ("sqrt", "mpa") => sqrt(ops, a, SqrtMethod::Mpa { degree: 5 })?,
            ("inv_sqrt", "newton_schulz") => inv_sqrt(ops, a, ns)?,
            ("inv_sqrt", _) => inv_sqrt_polar_express(ops, a, 0.0, 10)?,
            _ => inv_root(ops, a, 4, InvRootOptions::default())?.x,
        };
        ops.read(y)
    }
    let mut out = Vec::new();
    for which in methods {
        let name = format!("{} {}", which.0, which.1);
        if !wants(&name) {
            continue;
        }
        let got = on(&mut GpuMats::new(ctx)?, &data, b, n, which)?;
        let want = on(&mut CpuMats::default(), &data, b, n, which)?;
        let worst =
            (0..b).map(|z| rel_to(&got[z * n * n..][..n * n], &want[z * n * n..][..n * n], None)).fold(0.0, worse);
        out.push(report(&name, format!("{b}x {n}x{n} SPD"), "rel. Frobenius", worst, 1e-4));
    }
    Ok(out)
}

/// Each matrix optimizer at its defaults (lr raised where the default barely moves the
/// parameters), on the GPU and its CPU twin with the same gradients: stacks of same-shape
/// parameters beside odd ones, compared after `steps` steps relative to the movement.
fn matrix_optimizers(
    ctx: &Context,
    steps: usize,
    wants: &dyn Fn(&str) -> bool,
    rng: &mut TestRng,
) -> Result<Vec<MatrixReport>> {
    use crate::optim::{
        Asgo, AsgoConfig, AuonBuilder, AuonConfig, Dasgo, DasgoConfig, MuonBuilder, MuonConfig, ParamId, RegBuilder,
        RegConfig,
    };
    let shapes: [&[usize]; 5] = [&[40, 24], &[40, 24], &[40, 24], &[24, 40], &[16, 3, 3]];
    let inits: Vec<Vec<f32>> = shapes.iter().map(|s| rng.uniforms(s.iter().product(), 0.5)).collect();
    let mut out = Vec::new();
    type Pair = (Box<dyn Stepper>, Box<dyn Stepper>);
    type AddParam<'a> = dyn FnMut(&str, &[f32], &[usize]) -> Result<ParamId> + 'a;
    let build = |name: &str| -> Result<Pair> {
        let add = |f: &mut AddParam| -> Result<()> {
            for (i, (s, p)) in shapes.iter().zip(&inits).enumerate() {
                f(&format!("p{i}"), p, s)?;
            }
            Ok(())
        };
        Ok(match name {
            "muon" => {
                let mut b = MuonBuilder::new(MuonConfig::default());
                add(&mut |n, p, s| b.param(n, p, s))?;
                b.param("bias", &inits[0][..24], &[24])?;
                (Box::new(b.clone().build(ctx)?), Box::new(b.build_cpu()?))
            }
            "auon" | "hybrid_auon" => {
                let mut b = AuonBuilder::new(AuonConfig { lr: 0.05, ..Default::default() }, name == "hybrid_auon");
                add(&mut |n, p, s| b.param(n, p, s))?;
                (Box::new(b.clone().build(ctx)?), Box::new(b.build_cpu()?))
            }
            "reg" => {
                let mut b = RegBuilder::new(RegConfig { lr: 0.01, ..Default::default() });
                add(&mut |n, p, s| b.param(n, p, s))?;
                (Box::new(b.clone().build(ctx)?), Box::new(b.build_cpu()?))
            }
            "asgo" => {
                let (mut g, mut c) = (Asgo::gpu(ctx, AsgoConfig::default())?, Asgo::cpu(AsgoConfig::default())?);
                add(&mut |n, p, s| g.add_param(n, p, s))?;
                add(&mut |n, p, s| c.add_param(n, p, s))?;
                (Box::new(g), Box::new(c))
            }
            _ => {
                let cfg = DasgoConfig { lr: 0.01, ..Default::default() };
                let (mut g, mut c) = (Dasgo::gpu(ctx, cfg.clone())?, Dasgo::cpu(cfg)?);
                add(&mut |n, p, s| g.add_param(n, p, s))?;
                add(&mut |n, p, s| c.add_param(n, p, s))?;
                (Box::new(g), Box::new(c))
            }
        })
    };
    for name in ["muon", "auon", "hybrid_auon", "reg", "asgo", "dasgo"] {
        if !wants(name) {
            continue;
        }
        let (mut gpu, mut cpu) = build(name)?;
        let ids: Vec<ParamId> = (0..gpu.params().len()).map(ParamId).collect();
        let start: Vec<Vec<f32>> = ids.iter().map(|&id| cpu.read_param(id)).collect::<Result<_>>()?;
        for t in 0..steps {
            for &id in &ids {
                let g = grad(rng, start[id.0].len(), t, false);
                gpu.write_grad(id, &g)?;
                cpu.write_grad(id, &g)?;
            }
            gpu.step()?;
            cpu.step()?;
        }
        let mut worst = 0.0f64;
        for &id in &ids {
            worst = worse(worst, rel_to(&gpu.read_param(id)?, &cpu.read_param(id)?, Some(&start[id.0])));
        }
        let case = format!("3x 40x24, 24x40, 16x3x3, {steps} steps");
        out.push(report(name, case, "rel. movement", worst, 1e-4));
    }
    Ok(out)
}
