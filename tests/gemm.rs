//! GEMM parity, GPU vs the f64 CPU oracle, for every op combination and awkward shapes, batched and
//! broadcast, with α and β.
//!
//! Tolerance: the shader accumulates k products in f32; each rounding is at most ε/2 of a partial sum
//! bounded by S = Σ_l |a_il|·|b_lj|, so the worst case is k·ε/2·S, but the roundings are independent
//! and of both signs, so their sum grows like sqrt(k)·ε/2·S (the usual probabilistic bound). We
//! allow (sqrt(k) + 2)·ε·|α|·S, plus one rounding of the α·acc + β·c epilogue.
//!
//! Every case runs through every kernel the adapter can run (64×64 and 128×128 tiles everywhere; the
//! packed-panel kernel where subgroups are 8 lanes wide, as on lavapipe), whatever it would pick.

mod common;

use gpuopt::kernels::gemm::{gemm, GemmDesc, GemmKernel};
use gpuopt::parity::TestRng;
use gpuopt::{reference, Tensor};

/// The kernels every case runs through: all that this adapter can run.
fn kernels() -> Vec<GemmKernel> {
    let mut v = vec![GemmKernel::Tile64, GemmKernel::Tile128, GemmKernel::Tile128Prefetch];
    if common::ctx().info().subgroup_size == Some(gpuopt::kernels::gemm::PANEL_LANES) {
        v.push(GemmKernel::Panel);
    }
    v
}

/// Every case of `cases` paired with every kernel of [`kernels`].
fn with_kernels<T: Copy>(cases: impl IntoIterator<Item = T>) -> Vec<(T, GemmKernel)> {
    cases.into_iter().flat_map(|case| kernels().into_iter().map(move |kernel| (case, kernel))).collect()
}

/// Asserts that each of the `batch` m×m matrices in `c` equals its transpose bit for bit.
fn assert_bitwise_symmetric(c: &[f32], m: usize, batch: usize, what: &str) {
    for z in 0..batch {
        for i in 0..m {
            for j in 0..i {
                let (l, u) = (c[z * m * m + i * m + j], c[z * m * m + j * m + i]);
                assert_eq!(l.to_bits(), u.to_bits(), "{what} [{z}] ({i}, {j})");
            }
        }
    }
}

fn check(desc: GemmDesc, broadcast_a: bool, broadcast_b: bool) {
    for kernel in kernels() {
        check_one(GemmDesc { kernel, ..desc }, broadcast_a, broadcast_b);
    }
}

fn check_one(desc: GemmDesc, broadcast_a: bool, broadcast_b: bool) {
    let ctx = common::ctx();
    let mut rng = TestRng::new((desc.m * 31 + desc.n * 7 + desc.k) as u64);
    let a_len = desc.m * desc.k * if broadcast_a { 1 } else { desc.batch };
    let b_len = desc.k * desc.n * if broadcast_b { 1 } else { desc.batch };
    let c_len = desc.m * desc.n * desc.batch;
    let a = rng.uniforms(a_len, 1.0);
    let b = rng.uniforms(b_len, 1.0);
    let c0 = rng.uniforms(c_len, 1.0);
    let (ta, tb, tc) = (
        Tensor::from_slice(&ctx, &a, &[a_len]).unwrap(),
        Tensor::from_slice(&ctx, &b, &[b_len]).unwrap(),
        Tensor::from_slice(&ctx, &c0, &[c_len]).unwrap(),
    );
    gemm(&ctx, desc, &ta, &tb, &tc).unwrap();
    let got = tc.to_vec(&ctx).unwrap();
    let mut want = c0.clone();
    reference::gemm::gemm(&desc, &a, &b, &mut want);
    let scale = reference::gemm::abs_product(&desc, &a, &b);
    let eps = f32::EPSILON;
    let kf = (desc.k as f32).sqrt() + 2.0;
    for i in 0..c_len {
        let tol = kf * eps * desc.alpha.abs() * scale[i] + 2.0 * eps * (want[i].abs() + (desc.beta * c0[i]).abs());
        assert!((got[i] - want[i]).abs() <= tol, "{desc:?} element {i}: got {}, want {}, tol {tol}", got[i], want[i]);
    }
}

/// Records `plan` once, runs it and reads C back.
fn run(ctx: &gpuopt::Context, plan: &gpuopt::kernels::gemm::GemmPlan, c: &Tensor) -> Vec<f32> {
    let mut enc = ctx.encoder("t");
    plan.record(&mut gpuopt::gpu::compute_pass(&mut enc, "t"));
    ctx.submit(enc);
    c.to_vec(ctx).unwrap()
}

const SHAPES: &[(usize, usize, usize)] =
    &[(1, 1, 1), (7, 3, 5), (37, 53, 29), (128, 96, 64), (256, 1000, 64), (1000, 256, 300)];

#[test]
fn gemm_matches_reference_for_all_op_combinations() {
    for &(m, n, k) in SHAPES {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            check(GemmDesc { trans_a, trans_b, ..GemmDesc::new(m, n, k) }, false, false);
        }
    }
}

/// Products large enough that the panel kernel packs a B stored k×n instead of reading it in place
/// (`pack_b_kn`; on its own and shared by a batch) give the same bits as the same product with B
/// stored transposed, which every kernel reads in place: the summation order does not depend on
/// where the operands come from. Each product is also checked against the f64 oracle at a sample.
#[test]
fn a_large_b_gives_the_same_bits_stored_either_way() {
    use gpuopt::kernels::gemm::{pack_b_kn, GemmPlan};
    let ctx = common::ctx();
    // (m, n, k, batch): one 1024^3 product; four 256-row products sharing one 1024 x 1024 B.
    for (m, n, k, batch) in [(1024, 1024, 1024, 1), (256, 1024, 1024, 4)] {
        assert!(pack_b_kn(m * batch, k, n), "the case must take the packed path");
        let mut rng = TestRng::new(m as u64 + batch as u64);
        let a = rng.uniforms(batch * m * k, 1.0);
        let b = rng.uniforms(k * n, 1.0);
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let ta = Tensor::from_slice(&ctx, &a, &[a.len()]).unwrap();
        let c = Tensor::zeros(&ctx, &[batch * m * n]).unwrap();
        for kernel in kernels() {
            let (mut got, mut dispatches) = (Vec::new(), Vec::new());
            for (stored, trans_b) in [(&b, false), (&bt, true)] {
                let tb = Tensor::from_slice(&ctx, stored, &[stored.len()]).unwrap();
                let desc = GemmDesc { kernel, trans_b, batch, split_k: 1, ..GemmDesc::new(m, n, k) };
                let plan = GemmPlan::new(&ctx, desc, &ta, &tb, &c).unwrap();
                let mut enc = ctx.encoder("count");
                dispatches.push(plan.record(&mut gpuopt::gpu::compute_pass(&mut enc, "count")));
                got.push(run(&ctx, &plan, &c));
            }
            if kernel == GemmKernel::Panel {
                // The packed path is the one taken: a packing dispatch more than B read in place.
                assert_eq!(dispatches[0], dispatches[1] + 1, "{kernel:?} {batch} x {m}x{n}x{k}: {dispatches:?}");
            }
            let what = format!("{kernel:?} {batch} x {m}x{n}x{k}");
            let differ = got[0].iter().zip(&got[1]).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!(differ, 0, "{what}: B stored k x n and n x k give different bits");
            for (z, i, j) in [(0, 0, 0), (batch - 1, m - 1, n - 1), (batch / 2, m / 3, n / 2)] {
                let exact: f64 = (0..k).map(|l| a[z * m * k + i * k + l] as f64 * b[l * n + j] as f64).sum();
                let scale: f64 = (0..k).map(|l| (a[z * m * k + i * k + l] * b[l * n + j]).abs() as f64).sum();
                let tol = ((k as f64).sqrt() + 2.0) * f32::EPSILON as f64 * scale;
                let v = got[0][z * m * n + i * n + j] as f64;
                assert!((v - exact).abs() <= tol, "{what} [{z}] ({i}, {j}): {v} vs {exact}");
            }
        }
    }
}

/// Under an adapter's loop budget (llvmpipe stops a shader's loops after 65,535 iterations, silently;
/// here a budget of 2,000 set through ContextOptions, so that it binds on any adapter at small k):
/// long k runs split into slices within the budget and matches the oracle, on every kernel asked
/// for; a product that cannot split (batched) is refused, not summed short.
#[test]
fn long_k_stays_within_the_adapters_loop_budget() {
    use gpuopt::kernels::gemm::GemmPlan;
    let ctx = common::ctx_with(gpuopt::ContextOptions { loop_limit: Some(2000), ..Default::default() });
    assert_eq!(ctx.info().loop_limit, Some(2000));
    let k = 5000;
    let mut kernels = vec![GemmKernel::Auto, GemmKernel::Tile64, GemmKernel::Tile128];
    if ctx.info().subgroup_size == Some(gpuopt::kernels::gemm::PANEL_LANES) {
        kernels.push(GemmKernel::Panel);
    }
    for kernel in kernels {
        for (m, n, trans_a, trans_b, gram) in
            [(40, 24, false, false, false), (40, 24, true, false, false), (33, 33, false, true, true)]
        {
            let mut rng = TestRng::new(k as u64 + m as u64);
            let a = rng.uniforms(m * k, 1.0);
            let b = if gram { a.clone() } else { rng.uniforms(k * n, 1.0) };
            let ta = Tensor::from_slice(&ctx, &a, &[a.len()]).unwrap();
            let tb_own = Tensor::from_slice(&ctx, &b, &[b.len()]).unwrap();
            let tb = if gram { &ta } else { &tb_own };
            let c = Tensor::zeros(&ctx, &[m * n]).unwrap();
            let desc = GemmDesc { kernel, trans_a, trans_b, symmetric: gram, ..GemmDesc::new(m, n, k) };
            let plan = GemmPlan::new(&ctx, desc, &ta, tb, &c).unwrap();
            assert!(plan.slices() >= 3, "{kernel:?}: k = {k} must be split under the budget, got {}", plan.slices());
            let got = run(&ctx, &plan, &c);
            let mut want = vec![0.0; m * n];
            reference::gemm::gemm(&desc, &a, &b, &mut want);
            let scale = reference::gemm::abs_product(&desc, &a, &b);
            let tol = |i: usize| ((k as f32).sqrt() + 2.0) * f32::EPSILON * scale[i];
            for i in 0..m * n {
                assert!((got[i] - want[i]).abs() <= tol(i), "{desc:?} [{i}]: {} vs {}", got[i], want[i]);
            }
        }
    }
    let batched = GemmDesc { batch: 2, ..GemmDesc::new(8, 8, k) };
    let (a, b, c) = (
        Tensor::zeros(&ctx, &[2 * 8 * k]).unwrap(),
        Tensor::zeros(&ctx, &[k * 8]).unwrap(),
        Tensor::zeros(&ctx, &[2 * 64]).unwrap(),
    );
    let e = GemmPlan::new(&ctx, batched, &a, &b, &c).err().expect("a batched long k is refused");
    assert!(e.to_string().contains("loop iterations") && e.to_string().contains("batched"), "{e}");
    // A batch whose k the panel kernel's loop holds (k = 3,000 <= 4,000 here) runs there, where the
    // adapter has it (8-lane subgroups), even when the tiled kernel was asked for; elsewhere refused.
    let k = 3000;
    let mut rng = TestRng::new(9);
    let (av, bv) = (rng.uniforms(2 * 8 * k, 1.0), rng.uniforms(k * 8, 1.0));
    let (a, b) =
        (Tensor::from_slice(&ctx, &av, &[av.len()]).unwrap(), Tensor::from_slice(&ctx, &bv, &[bv.len()]).unwrap());
    let desc = GemmDesc { batch: 2, kernel: GemmKernel::Tile64, ..GemmDesc::new(8, 8, k) };
    match GemmPlan::new(&ctx, desc, &a, &b, &c) {
        Ok(plan) => {
            assert_eq!(ctx.info().subgroup_size, Some(gpuopt::kernels::gemm::PANEL_LANES));
            let got = run(&ctx, &plan, &c);
            let mut want = vec![0.0; 2 * 64];
            reference::gemm::gemm(&desc, &av, &bv, &mut want);
            let scale = reference::gemm::abs_product(&desc, &av, &bv);
            for i in 0..2 * 64 {
                let tol = ((k as f32).sqrt() + 2.0) * f32::EPSILON * scale[i];
                assert!((got[i] - want[i]).abs() <= tol, "batched [{i}]: {} vs {}", got[i], want[i]);
            }
        }
        Err(e) => assert!(e.to_string().contains("batched") && ctx.info().subgroup_size.is_none_or(|w| w != 8), "{e}"),
    }
}

/// The driver's own budget (llvmpipe's 65,535, none on GPUs): k = 70,000, which the tiled kernel
/// summed to 58,255 on llvmpipe before, is exact on every adapter.
#[test]
fn a_product_longer_than_llvmpipes_loop_budget_is_whole() {
    let ctx = common::ctx();
    let (m, n, k) = (8, 8, 70_000);
    let ones = Tensor::from_slice(&ctx, &vec![1.0f32; m * k], &[m * k]).unwrap();
    let c = Tensor::zeros(&ctx, &[m * n]).unwrap();
    for kernel in kernels().into_iter().chain([GemmKernel::Auto]) {
        gemm(&ctx, GemmDesc { kernel, ..GemmDesc::new(m, n, k) }, &ones, &ones, &c).unwrap();
        let got = c.to_vec(&ctx).unwrap();
        assert!(got.iter().all(|&v| v == k as f32), "{kernel:?}: {:?}", &got[..4]);
    }
}

#[test]
fn gemm_alpha_beta_epilogue() {
    check(GemmDesc { alpha: -0.5, beta: 2.0, ..GemmDesc::new(65, 33, 17) }, false, false);
    check(GemmDesc { alpha: 3.0, beta: -1.0, trans_a: true, ..GemmDesc::new(5, 70, 130) }, false, false);
}

#[test]
fn gemm_batched_and_broadcast() {
    check(GemmDesc { batch: 5, ..GemmDesc::new(37, 53, 29) }, false, false);
    check(GemmDesc { batch: 3, trans_b: true, ..GemmDesc::new(70, 20, 90) }, true, false);
    check(GemmDesc { batch: 4, trans_a: true, beta: 1.0, ..GemmDesc::new(9, 66, 31) }, false, true);
    // Aligned row-major operands, which the panel kernel reads in place (k % 4 == 0, n % 4 == 0):
    // a broadcast A over a batch of B, and the other way round, with ragged panels (m < 64, n < 32).
    check(GemmDesc { batch: 3, alpha: 0.5, ..GemmDesc::new(70, 36, 44) }, true, false);
    check(GemmDesc { batch: 2, beta: -1.0, ..GemmDesc::new(9, 100, 8) }, false, true);
    // C of whole 64×32 tiles with β = 0: the panel kernel writes α·A·B into C itself (no epilogue pass).
    check(GemmDesc { batch: 2, alpha: -1.5, ..GemmDesc::new(128, 64, 20) }, false, false);
    check(GemmDesc { batch: 3, trans_a: true, trans_b: true, ..GemmDesc::new(64, 96, 7) }, false, true);
    // A transposed B with k % 4 == 0, which the panel kernel reads in place 4 stored rows per lane
    // (gemm_panel_bt): batched and broadcast, n ragged (lanes read rows past n), and whole tiles.
    check(GemmDesc { batch: 3, trans_b: true, ..GemmDesc::new(70, 45, 36) }, false, false);
    check(GemmDesc { batch: 2, trans_b: true, alpha: 2.0, ..GemmDesc::new(64, 64, 12) }, false, true);
    // Long k, still read in place (k <= PANEL_IN_PLACE_K), and past it (packed).
    check(GemmDesc { batch: 2, trans_b: true, ..GemmDesc::new(70, 40, 1100) }, false, false);
    check(GemmDesc { beta: 0.5, ..GemmDesc::new(64, 36, 2052) }, false, false);
    check(GemmDesc { trans_b: true, ..GemmDesc::new(9, 33, 4100) }, false, false);
    check(GemmDesc { trans_b: true, ..GemmDesc::new(9, 33, 4096) }, false, false);
    check(GemmDesc { batch: 3, trans_b: true, ..GemmDesc::new(64, 40, 16) }, true, false);
    // A transposed A, which the panel kernel packs: ragged m, broadcast, both operands transposed,
    // whole tiles with an addend, long k.
    check(GemmDesc { batch: 3, trans_a: true, ..GemmDesc::new(68, 36, 24) }, true, false);
    check(GemmDesc { batch: 2, trans_a: true, trans_b: true, beta: 0.5, ..GemmDesc::new(128, 40, 12) }, false, false);
    check(GemmDesc { trans_a: true, trans_b: true, ..GemmDesc::new(64, 64, 2000) }, false, false);
}

#[test]
fn gemm_with_beta_zero_does_not_read_c() {
    let ctx = common::ctx();
    for kernel in kernels() {
        let desc = GemmDesc { kernel, ..GemmDesc::new(3, 2, 4) };
        let a = Tensor::from_slice(&ctx, &[1.0; 12], &[12]).unwrap();
        let b = Tensor::from_slice(&ctx, &[0.5; 8], &[8]).unwrap();
        let c = Tensor::from_slice(&ctx, &[f32::NAN; 6], &[6]).unwrap();
        gemm(&ctx, desc, &a, &b, &c).unwrap();
        assert_eq!(c.to_vec(&ctx).unwrap(), vec![2.0; 6], "{kernel:?}");
    }
}

#[test]
fn auto_kernel_choice_follows_adapter_and_size() {
    let ctx = common::ctx();
    let big = GemmDesc::new(4096, 4096, 64);
    let small = GemmDesc::new(256, 256, 64);
    let on_gpu = !ctx.info().is_cpu();
    // lavapipe offers 8-lane subgroups: a CPU adapter without them would fall back to Tile64.
    let cpu = if ctx.info().subgroup_size == Some(8) { GemmKernel::Panel } else { GemmKernel::Tile64 };
    // Small problems stay on the 64×64 kernel everywhere (on a CPU adapter, below PANEL_MIN_WORK).
    assert_eq!(GemmKernel::Auto.resolve(&ctx, &small), GemmKernel::Tile64);
    let mid = GemmDesc::new(256, 256, 256);
    assert_eq!(GemmKernel::Auto.resolve(&ctx, &mid), if on_gpu { GemmKernel::Tile64 } else { cpu });
    assert_eq!(GemmKernel::Auto.resolve(&ctx, &big), if on_gpu { GemmKernel::Tile128 } else { cpu });
    // Split-K asked for on a CPU adapter: the panel kernel never splits, so the tiled one runs.
    let split = GemmDesc { split_k: 4, ..mid };
    assert_eq!(GemmKernel::Auto.resolve(&ctx, &split), GemmKernel::Tile64);
    // llvmpipe names its SIMD width; at 256 bits its subgroups are 8 lanes and the panel kernel must
    // be in use (so a wgpu or driver change that hides subgroups cannot silently slow every GEMM).
    if ctx.info().name.contains("llvmpipe") && ctx.info().name.contains("256 bits") {
        assert_eq!(ctx.info().subgroup_size, Some(8), "{}", ctx.info());
    }
    // An explicit choice is kept.
    assert_eq!(GemmKernel::Tile128.resolve(&ctx, &small), GemmKernel::Tile128);
}

#[test]
fn gemm_rejects_bad_shapes() {
    let ctx = common::ctx();
    let t = |n: usize| Tensor::zeros(&ctx, &[n]).unwrap();
    assert!(matches!(gemm(&ctx, GemmDesc::new(3, 4, 5), &t(14), &t(20), &t(12)), Err(gpuopt::Error::Shape { .. })));
    assert!(matches!(gemm(&ctx, GemmDesc::new(3, 4, 5), &t(15), &t(20), &t(13)), Err(gpuopt::Error::Shape { .. })));
    assert!(gemm(&ctx, GemmDesc { batch: 0, ..GemmDesc::new(1, 1, 1) }, &t(1), &t(1), &t(1)).is_err());
    assert!(gemm(&ctx, GemmDesc { alpha: f32::NAN, ..GemmDesc::new(1, 1, 1) }, &t(1), &t(1), &t(1)).is_err());
}

#[test]
fn gemm_fused_addend_epilogue() {
    let ctx = common::ctx();
    let mut rng = TestRng::new(11);
    let cases = [
        (GemmDesc { alpha: 2.0315, beta: -4.775, ..GemmDesc::new(33, 33, 33) }, 33 * 33),
        (GemmDesc { alpha: 1.0, beta: 3.4445, batch: 3, ..GemmDesc::new(20, 50, 20) }, 3 * 20 * 50),
        (GemmDesc { alpha: -1.0, beta: 0.5, ..GemmDesc::new(140, 131, 70) }, 140 * 131),
        // Whole 64×32 tiles: the panel kernel adds β·D as it writes C (no epilogue pass), D per
        // matrix and broadcast.
        (GemmDesc { alpha: 0.75, beta: -2.0, batch: 2, ..GemmDesc::new(128, 64, 40) }, 2 * 128 * 64),
        (GemmDesc { alpha: 1.0, beta: 3.0, batch: 3, trans_b: true, ..GemmDesc::new(64, 32, 12) }, 64 * 32),
    ];
    for (desc, d_len) in kernels().into_iter().flat_map(|kernel| cases.map(|(d, l)| (GemmDesc { kernel, ..d }, l))) {
        let a = rng.uniforms(desc.m * desc.k * desc.batch, 1.0);
        let b = rng.uniforms(desc.k * desc.n * desc.batch, 1.0);
        let d = rng.uniforms(d_len, 1.0);
        let t = |v: &[f32]| Tensor::from_slice(&ctx, v, &[v.len()]).unwrap();
        let (ta, tb, td) = (t(&a), t(&b), t(&d));
        let tc =
            Tensor::from_slice(&ctx, &vec![f32::NAN; desc.m * desc.n * desc.batch], &[desc.m * desc.n * desc.batch])
                .unwrap();
        let plan = gpuopt::kernels::gemm::GemmPlan::with_addend(&ctx, desc, &ta, &tb, &tc, &td).unwrap();
        let got = run(&ctx, &plan, &tc);
        let mut want = vec![0.0; got.len()];
        reference::gemm::gemm_addend(&desc, &a, &b, &mut want, &d);
        let scale = reference::gemm::abs_product(&desc, &a, &b);
        let kf = (desc.k as f32).sqrt() + 2.0;
        for i in 0..got.len() {
            let tol = kf * f32::EPSILON * desc.alpha.abs() * scale[i]
                + 2.0 * f32::EPSILON * (want[i].abs() + (desc.beta * d[i % d_len]).abs());
            assert!((got[i] - want[i]).abs() <= tol, "{desc:?} {i}: {} vs {}", got[i], want[i]);
        }
    }
}

#[test]
fn gram_half_product_matches_reference_and_is_exactly_symmetric() {
    let ctx = common::ctx();
    // (128, 40, 2): whole 64×32 tiles, which the panel kernel writes into C directly, transposes too.
    // The panel kernel's grid pairs row panels: odd and even counts of them, with the last column
    // tile whole or ragged.
    let shapes =
        [(1, 1, 1), (7, 3, 1), (37, 53, 2), (65, 29, 1), (130, 70, 3), (260, 40, 1), (128, 40, 2), (192, 20, 2)];
    // Each as X·Xᵀ of an m×k X and as Xᵀ·X of a k×m X (Shampoo's right statistic).
    for (((m, k, batch), xtx), kernel) in with_kernels(shapes.into_iter().flat_map(|s| [(s, false), (s, true)])) {
        let desc = if xtx {
            GemmDesc { batch, kernel, trans_a: true, symmetric: true, ..GemmDesc::new(m, m, k) }
        } else {
            GemmDesc { batch, kernel, ..GemmDesc::gram(m, k) }
        };
        let x = TestRng::new(m as u64).uniforms(batch * m * k, 1.0);
        let tx = Tensor::from_slice(&ctx, &x, &[batch * m * k]).unwrap();
        let tc = Tensor::zeros(&ctx, &[batch * m * m]).unwrap();
        gemm(&ctx, desc, &tx, &tx, &tc).unwrap();
        let c = tc.to_vec(&ctx).unwrap();
        let mut want = vec![0.0; batch * m * m];
        reference::gemm::gemm(&desc, &x, &x, &mut want);
        let scale = reference::gemm::abs_product(&desc, &x, &x);
        for i in 0..want.len() {
            let tol = ((k as f32).sqrt() + 2.0) * f32::EPSILON * scale[i] + 2.0 * f32::EPSILON * want[i].abs();
            assert!((c[i] - want[i]).abs() <= tol, "{desc:?} {i}: {} vs {}", c[i], want[i]);
        }
        // Bitwise symmetry: each off-diagonal pair is written from one accumulator.
        assert_bitwise_symmetric(&c, m, batch, &format!("{desc:?}"));
    }
    assert!(gemm(
        &ctx,
        GemmDesc { symmetric: true, ..GemmDesc::new(3, 4, 2) },
        &Tensor::zeros(&ctx, &[6]).unwrap(),
        &Tensor::zeros(&ctx, &[8]).unwrap(),
        &Tensor::zeros(&ctx, &[12]).unwrap()
    )
    .is_err());
}

/// `batch` random m×m matrices, each bitwise symmetric (upper triangle mirrored).
fn symmetric_matrices(rng: &mut TestRng, m: usize, batch: usize) -> Vec<f32> {
    let mut a = rng.uniforms(batch * m * m, 1.0);
    for z in 0..batch {
        for i in 0..m {
            for j in 0..i {
                a[z * m * m + i * m + j] = a[z * m * m + j * m + i];
            }
        }
    }
    a
}

#[test]
fn commuting_product_of_two_matrices_is_exactly_symmetric() {
    // A·B with B = A² + A (a polynomial in A, so A·B is symmetric), A and B separate buffers as in
    // the matrix roots' iterations: the result must still equal its transpose bit for bit, also in
    // the tiles crossing the diagonal (which compute their lower halves themselves when the two
    // operands are one matrix).
    let ctx = common::ctx();
    let (m, batch) = (128, 2);
    let a = symmetric_matrices(&mut TestRng::new(41), m, batch);
    let mut b = vec![0.0f32; batch * m * m];
    for z in 0..batch {
        for i in 0..m {
            for j in i..m {
                let dot: f64 = (0..m).map(|k| a[z * m * m + i * m + k] as f64 * a[z * m * m + k * m + j] as f64).sum();
                let v = (dot + a[z * m * m + i * m + j] as f64) as f32;
                (b[z * m * m + i * m + j], b[z * m * m + j * m + i]) = (v, v);
            }
        }
    }
    let (ta, tb) =
        (Tensor::from_slice(&ctx, &a, &[batch, m, m]).unwrap(), Tensor::from_slice(&ctx, &b, &[batch, m, m]).unwrap());
    for (addend, kernel) in with_kernels([false, true]) {
        let desc = GemmDesc {
            batch,
            alpha: 0.75,
            beta: if addend { 2.0 } else { 0.0 },
            symmetric: true,
            kernel,
            ..GemmDesc::new(m, m, m)
        };
        let tc = Tensor::from_slice(&ctx, &vec![f32::NAN; batch * m * m], &[batch, m, m]).unwrap();
        // The addend A: symmetric, a separate buffer (written by the product kernel itself where it can).
        let plan = if addend {
            gpuopt::kernels::gemm::GemmPlan::with_addend(&ctx, desc, &ta, &tb, &tc, &ta).unwrap()
        } else {
            gpuopt::kernels::gemm::GemmPlan::new(&ctx, desc, &ta, &tb, &tc).unwrap()
        };
        let got = run(&ctx, &plan, &tc);
        let mut want = vec![0.0; got.len()];
        reference::gemm::gemm_addend(&desc, &a, &b, &mut want, &a);
        let scale = reference::gemm::abs_product(&desc, &a, &b);
        for z in 0..batch {
            for i in 0..m {
                for j in i..m {
                    let e = z * m * m + i * m + j;
                    let tol = ((m as f32).sqrt() + 2.0) * f32::EPSILON * 0.75 * scale[e]
                        + 2.0 * f32::EPSILON * (want[e].abs() + 2.0 * a[e].abs());
                    assert!((got[e] - want[e]).abs() <= tol, "{desc:?} [{z}] ({i}, {j}): {} vs {}", got[e], want[e]);
                }
            }
        }
        assert_bitwise_symmetric(&got, m, batch, &format!("{desc:?}"));
    }
}

/// NS5's second product, c·A·A + b·A with A symmetric: half the tiles computed, the addend fused
/// (for whole tiles the panel kernel adds it as it writes C, the tiles above the diagonal also
/// storing their transposes), as A·A and as A·Aᵀ.
#[test]
fn symmetric_product_with_addend_is_exactly_symmetric() {
    let ctx = common::ctx();
    // (128, 2, true): D one matrix broadcast over the batch; 72: in place, through the scratch pass.
    for (m, batch, broadcast_d) in [(128, 2, false), (128, 2, true), (70, 1, false), (72, 1, false), (192, 1, false)] {
        let a = symmetric_matrices(&mut TestRng::new(m as u64 + 5), m, batch);
        let ta = Tensor::from_slice(&ctx, &a, &[batch, m, m]).unwrap();
        let d = if broadcast_d { a[..m * m].to_vec() } else { a.clone() };
        let td = Tensor::from_slice(&ctx, &d, &[d.len()]).unwrap();
        for (trans_b, kernel) in with_kernels([false, true]) {
            let desc = GemmDesc {
                batch,
                alpha: 2.0315,
                beta: -4.775,
                symmetric: true,
                trans_b,
                kernel,
                ..GemmDesc::new(m, m, m)
            };
            let tc = Tensor::from_slice(&ctx, &vec![f32::NAN; batch * m * m], &[batch, m, m]).unwrap();
            let plan = gpuopt::kernels::gemm::GemmPlan::with_addend(&ctx, desc, &ta, &ta, &tc, &td).unwrap();
            let got = run(&ctx, &plan, &tc);
            let mut want = vec![0.0; got.len()];
            reference::gemm::gemm_addend(&desc, &a, &a, &mut want, &d);
            let scale = reference::gemm::abs_product(&desc, &a, &a);
            for i in 0..got.len() {
                let tol = ((m as f32).sqrt() + 2.0) * f32::EPSILON * 2.0315 * scale[i]
                    + 2.0 * f32::EPSILON * (want[i].abs() + 4.775 * d[i % d.len()].abs());
                assert!((got[i] - want[i]).abs() <= tol, "{desc:?} {i}: {} vs {}", got[i], want[i]);
            }
            assert_bitwise_symmetric(&got, m, batch, &format!("{desc:?}"));
        }
    }
}

/// An addend given as C itself is β·C: it must not bind C twice (a wgpu usage conflict).
#[test]
fn addend_given_as_c_is_beta_times_c() {
    let ctx = common::ctx();
    let mut rng = TestRng::new(17);
    for (m, n, k) in [(7, 3, 5), (64, 32, 8)] {
        for kernel in kernels() {
            let desc = GemmDesc { alpha: 1.5, beta: -0.5, kernel, ..GemmDesc::new(m, n, k) };
            let (a, b, c0) = (rng.uniforms(m * k, 1.0), rng.uniforms(k * n, 1.0), rng.uniforms(m * n, 1.0));
            let t = |v: &[f32]| Tensor::from_slice(&ctx, v, &[v.len()]).unwrap();
            let (ta, tb, tc) = (t(&a), t(&b), t(&c0));
            let plan = gpuopt::kernels::gemm::GemmPlan::with_addend(&ctx, desc, &ta, &tb, &tc, &tc).unwrap();
            let got = run(&ctx, &plan, &tc);
            let mut want = c0.clone();
            reference::gemm::gemm(&desc, &a, &b, &mut want);
            let scale = reference::gemm::abs_product(&desc, &a, &b);
            for i in 0..got.len() {
                let tol = ((k as f32).sqrt() + 2.0) * f32::EPSILON * (1.5 * scale[i] + 0.5 * c0[i].abs());
                assert!((got[i] - want[i]).abs() <= tol, "{desc:?} {i}: {} vs {}", got[i], want[i]);
            }
        }
    }
}

#[test]
fn split_k_matches_reference_for_all_op_combinations() {
    // k split into slices summed by a second dispatch; the last slice ragged (k not a multiple of 16).
    for &(m, n, k) in &[(7, 3, 50), (37, 53, 129), (130, 70, 300)] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            for split_k in [2, 3] {
                let desc = GemmDesc { trans_a, trans_b, split_k, alpha: -0.75, beta: 0.5, ..GemmDesc::new(m, n, k) };
                check(desc, false, false);
            }
        }
    }
    // beta = 0 must not read C through the reduction either.
    let ctx = common::ctx();
    let desc = GemmDesc { split_k: 4, ..GemmDesc::new(3, 2, 70) };
    let a = Tensor::from_slice(&ctx, &[1.0; 210], &[210]).unwrap();
    let b = Tensor::from_slice(&ctx, &[0.5; 140], &[140]).unwrap();
    let c = Tensor::from_slice(&ctx, &[f32::NAN; 6], &[6]).unwrap();
    let plan = gpuopt::kernels::gemm::GemmPlan::new(&ctx, desc, &a, &b, &c).unwrap();
    assert_eq!(plan.slices(), 3, "70 = 32 + 32 + 6");
    let mut enc = ctx.encoder("t");
    assert_eq!(plan.record(&mut gpuopt::gpu::compute_pass(&mut enc, "t")), 2, "the partial products and the reduction");
    ctx.submit(enc);
    assert_eq!(c.to_vec(&ctx).unwrap(), vec![35.0; 6]);
}

#[test]
fn split_k_gram_and_fused_addend() {
    let ctx = common::ctx();
    let mut rng = TestRng::new(21);
    // Split-K is a feature of the tiled kernels (the panel kernel never splits).
    for kernel in [GemmKernel::Tile64, GemmKernel::Tile128, GemmKernel::Tile128Prefetch] {
        // Gram X·Xᵀ (A and B the same buffer): slices are symmetric, still computed as half products.
        let (m, k) = (70, 260);
        let x = rng.uniforms(m * k, 1.0);
        let tx = Tensor::from_slice(&ctx, &x, &[m * k]).unwrap();
        let d = rng.uniforms(m * m, 1.0);
        let dd: Vec<f32> = (0..m * m).map(|i| d[i] + d[(i % m) * m + i / m]).collect(); // symmetric addend
        let td = Tensor::from_slice(&ctx, &dd, &[m * m]).unwrap();
        let tc = Tensor::zeros(&ctx, &[m * m]).unwrap();
        let desc = GemmDesc { split_k: 3, alpha: 2.0, beta: -1.0, kernel, ..GemmDesc::gram(m, k) };
        let plan = gpuopt::kernels::gemm::GemmPlan::with_addend(&ctx, desc, &tx, &tx, &tc, &td).unwrap();
        assert_eq!(plan.slices(), 3);
        let got = run(&ctx, &plan, &tc);
        let mut want = vec![0.0; m * m];
        reference::gemm::gemm_addend(&desc, &x, &x, &mut want, &dd);
        let scale = reference::gemm::abs_product(&desc, &x, &x);
        for i in 0..m * m {
            let tol = ((k as f32).sqrt() + 2.0) * f32::EPSILON * 2.0 * scale[i]
                + 2.0 * f32::EPSILON * (want[i].abs() + dd[i].abs());
            assert!((got[i] - want[i]).abs() <= tol, "{kernel:?} {i}: {} vs {}", got[i], want[i]);
            assert_eq!(got[i], got[(i % m) * m + i / m], "exactly symmetric");
        }
        // A symmetric product of two different matrices is never split (its slices are not symmetric).
        let ty = Tensor::from_slice(&ctx, &x, &[m * k]).unwrap();
        let desc = GemmDesc { split_k: 3, kernel, ..GemmDesc::gram(m, k) };
        assert_eq!(gpuopt::kernels::gemm::GemmPlan::new(&ctx, desc, &tx, &ty, &tc).unwrap().slices(), 1);
    }
    // The automatic choice does not split unless GPUOPT_GEMM_SPLIT_K=auto, and never on CPU adapters;
    // an explicit split is honoured, capped at one slice per k.
    let wide = GemmDesc::gram(768, 3072);
    let opted_in = std::env::var("GPUOPT_GEMM_SPLIT_K").is_ok_and(|v| v == "auto");
    let auto = wide.split_k_for(&ctx, true);
    if ctx.info().is_cpu() || !opted_in {
        assert_eq!(auto, 1);
    } else {
        assert!(auto > 1, "{auto}");
    }
    assert_eq!(GemmDesc { split_k: 4, ..wide }.split_k_for(&ctx, true), 4);
    assert_eq!(GemmDesc { split_k: 9, ..GemmDesc::new(2, 2, 5) }.split_k_for(&ctx, false), 5);
    let cap = gpuopt::kernels::gemm::MAX_SPLIT_K;
    assert_eq!(GemmDesc { split_k: 100_000, ..GemmDesc::new(2, 2, 2_000_000) }.split_k_for(&ctx, false), cap);
    assert_eq!(GemmDesc { split_k: 4, batch: 2, ..wide }.split_k_for(&ctx, true), 1, "batched: never");
}

#[test]
fn norm_scaled_products_match_reference() {
    use gpuopt::kernels::gemm::{GemmPlan, NormScale};
    let ctx = common::ctx();
    let mut rng = TestRng::new(31);
    let norms_v = [0.5f32, 3.0, 40.0];
    let norms = Tensor::from_slice(&ctx, &norms_v, &[3]).unwrap();
    let eps = 1e-3f32;
    // The second shape is whole 64×32 tiles: the panel kernel scales as it writes C.
    for ((batch, m, n, k), kernel) in with_kernels([(3, 19, 37, 70), (3, 64, 64, 12)]) {
        for (product_pow, addend_pow, split_k) in [(2, 0, 1), (1, 1, 1), (0, 1, 1), (2, 1, 3)] {
            let batch = if split_k > 1 { 1 } else { batch };
            let desc = GemmDesc { batch, alpha: 1.5, beta: -0.75, kernel, split_k, ..GemmDesc::new(m, n, k) };
            let a = rng.uniforms(batch * m * k, 1.0);
            let b = rng.uniforms(batch * k * n, 1.0);
            let d = rng.uniforms(batch * m * n, 1.0);
            let t = |v: &[f32]| Tensor::from_slice(&ctx, v, &[v.len()]).unwrap();
            let (ta, tb, td) = (t(&a), t(&b), t(&d));
            let tc = t(&vec![f32::NAN; batch * m * n]);
            let scale = NormScale { norms: &norms, eps, product_pow, addend_pow };
            let plan = GemmPlan::scaled(&ctx, desc, (&ta, &tb, &tc), Some(&td), scale).unwrap();
            let got = run(&ctx, &plan, &tc);
            // The reference: α·s^p·A·B + β·s^q·D per matrix.
            let unit = GemmDesc { batch: 1, alpha: 1.0, beta: 0.0, ..GemmDesc::new(m, n, k) };
            for z in 0..batch {
                let s = 1.0 / (norms_v[z] as f64 + eps as f64);
                let mut prod = vec![0.0; m * n];
                let (az, bz) = (&a[z * m * k..(z + 1) * m * k], &b[z * k * n..(z + 1) * k * n]);
                reference::gemm::gemm(&unit, az, bz, &mut prod);
                let scale_ab = reference::gemm::abs_product(&unit, az, bz);
                for i in 0..m * n {
                    let dv = d[z * m * n + i];
                    let want = 1.5 * s.powi(product_pow as i32) * prod[i] as f64
                        - 0.75 * s.powi(addend_pow as i32) * dv as f64;
                    let tol = ((k as f64).sqrt() + 4.0)
                        * f32::EPSILON as f64
                        * (1.5 * s.powi(product_pow as i32) * scale_ab[i] as f64
                            + 0.75 * s.powi(addend_pow as i32) * (dv as f64).abs());
                    let g = got[z * m * n + i] as f64;
                    assert!(
                        (g - want).abs() <= tol,
                        "{kernel:?} p={product_pow} q={addend_pow} [{z}][{i}]: {g} vs {want}"
                    );
                }
            }
        }
    }
    // Bad scales are refused.
    let t = |n: usize| Tensor::zeros(&ctx, &[n]).unwrap();
    let (a, b, c) = (t(6), t(6), t(4));
    let bad = |product_pow, eps: f32, len: usize| {
        let nn = t(len);
        let scale = NormScale { norms: &nn, eps, product_pow, addend_pow: 0 };
        GemmPlan::scaled(&ctx, GemmDesc { batch: 2, ..GemmDesc::new(1, 2, 3) }, (&a, &b, &c), None, scale).is_err()
    };
    assert!(bad(3, 0.0, 2), "power 3");
    assert!(bad(1, f32::NAN, 2), "eps NaN");
    assert!(bad(1, 0.0, 1), "fewer norms than matrices");
}
