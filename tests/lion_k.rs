//! Lion-K (ALGORITHMS.md §4.5) against the mathematics, not the CPU twin (tests/parity.rs holds the
//! GPU to the twin): each map's first step against its closed form in f64, the ℓp step's dual norm,
//! the constraint the map enforces with decoupled decay (‖x‖ ≤ 1/λ in K's dual norm), and the
//! validation of `k_map` / `k_p` / `k_scale`.

mod common;

use gpuopt::optim::{Algorithm, KMap, Lion, OptimizerBuilder, Stepper};
use gpuopt::parity::TestRng;

/// The GPU optimizer's parameters after one step from `p0` with gradient `g` (m starts at 0, so
/// c = (1 − β1)·g).
fn first_step(lion: Lion, p0: &[f32], g: &[f32]) -> Vec<f32> {
    let mut b = OptimizerBuilder::new(lion);
    let id = b.param("w", p0, &[p0.len()], b.default_group()).unwrap();
    let mut opt = b.build(&common::ctx()).unwrap();
    opt.write_grad(id, g).unwrap();
    opt.step().unwrap();
    opt.read_param(id).unwrap()
}

/// Each element within 8 ulp of the larger of its terms (decayed p0 and the step of at most lr):
/// a few f32 roundings and WGSL's tanh/pow/sqrt; a wrong map is off by a fraction of lr.
fn assert_close(got: &[f32], p0: &[f32], want: &[f64], lr: f64, what: &str) {
    for (i, ((&x, &y), &p)) in got.iter().zip(want).zip(p0).enumerate() {
        let tol = 8.0 * f32::EPSILON as f64 * (p.abs() as f64 + lr);
        assert!((x as f64 - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
    }
}

fn data(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = TestRng::new(seed);
    let mut g = rng.normals(n, 1.0);
    // Awkward values: zero, tiny, huge (the norm maps must scale instead of squaring 1e30).
    if n > 40 {
        g[0] = 0.0;
        g[1] = 1e-30;
        g[40] = -3e30;
    }
    (rng.normals(n, 1.0), g)
}

/// ∇K(c) in f64 for an elementwise map with scale a or s.
type Map = fn(f64, f64) -> f64;
/// The fixed point's direction for a constant gradient −u.
type Direction = fn(&[f32]) -> Vec<f64>;

#[test]
fn elementwise_maps_take_their_closed_form_first_step() {
    let (p0, g) = data(1000, 1);
    let (lr, beta1, wd) = (0.01, 0.9, 0.1);
    let cases: [(KMap, f64, Map); 3] = [
        (KMap::Huber, 0.05, |c, a| (c / a).clamp(-1.0, 1.0)),
        (KMap::Tanh, 20.0, |c, s| (s * c).tanh()),
        (KMap::Relativistic, 0.1, |c, a| if c.abs() > 1e100 { c.signum() } else { c / (c * c + a * a).sqrt() }),
    ];
    for (map, scale, d) in cases {
        let lion = Lion { lr, beta1, weight_decay: wd, k_map: map, k_scale: scale, ..Lion::default() };
        let got = first_step(lion, &p0, &g);
        let want: Vec<f64> = (p0.iter().zip(&g))
            .map(|(&p, &gi)| (1.0 - lr * wd) * p as f64 - lr * d((1.0 - beta1) * gi as f64, scale))
            .collect();
        assert_close(&got, &p0, &want, lr, &format!("{map:?}"));
    }
}

#[test]
fn l2_and_lp_steps_have_unit_dual_norm_and_the_closed_form() {
    for (map, p) in [(KMap::L2, 2.0f64), (KMap::Lp, 1.5), (KMap::Lp, 3.0)] {
        for n in [1usize, 7, 1000, 70_001] {
            let (p0, g) = data(n, n as u64);
            let lr = 0.01;
            let k_p = (map == KMap::Lp).then_some(p);
            let got = first_step(Lion { lr, k_map: map, k_p, ..Lion::default() }, &p0, &g);
            // c = 0.1·g; the map is scale-invariant, so ∇K(c) = ∇K(g).
            let gd: Vec<f64> = g.iter().map(|&x| x as f64).collect();
            let big = gd.iter().fold(0.0f64, |a, &x| a.max(x.abs()));
            let norm = gd.iter().map(|&x| (x.abs() / big).powf(p)).sum::<f64>().powf(1.0 / p);
            let dk: Vec<f64> = gd.iter().map(|&x| x.signum() * ((x.abs() / big) / norm).powf(p - 1.0)).collect();
            let want: Vec<f64> = p0.iter().zip(&dk).map(|(&a, &d)| a as f64 - lr * d).collect();
            assert_close(&got, &p0, &want, lr, &format!("{map:?} p={p} n={n}"));
            // ‖∇K(c)‖_q = 1 with 1/p + 1/q = 1 (the step has length lr in the dual norm).
            let q = p / (p - 1.0);
            let dual = dk.iter().map(|d| d.abs().powf(q)).sum::<f64>().powf(1.0 / q);
            assert!((dual - 1.0).abs() < 1e-9, "dual norm {dual}");
        }
    }
}

#[test]
fn a_zero_tensor_takes_no_step_and_nan_is_not_dropped() {
    for map in [KMap::L2, KMap::Huber] {
        let got = first_step(Lion { lr: 0.1, k_map: map, ..Lion::default() }, &[1.0, -2.0, 3.0], &[0.0; 3]);
        assert_eq!(got, vec![1.0, -2.0, 3.0], "{map:?}");
    }
    // Without the guard a NaN gradient must show in the ℓ2 map's tensor, not be skipped as 0.
    let got = first_step(Lion { lr: 0.1, k_map: KMap::L2, ..Lion::default() }, &[1.0, 2.0], &[f32::NAN, 1.0]);
    assert!(got.iter().all(|x| x.is_nan()), "{got:?}");
}

/// A tensor whose c is subnormal (a momentum decayed for thousands of steps, on a device that keeps
/// f32 subnormals) once made the ℓ2/ℓp norm pass divide by Inf: every element NaN. Now the step is
/// finite: the unit-norm step where subnormals are kept, no step where the device flushes them.
#[test]
fn subnormal_momentum_gives_a_finite_norm_step() {
    let c = [3e-40f32, -1e-40, 0.0, 2e-41, 5e-39];
    let p0 = [1.0f32, 2.0, 3.0, 4.0, 5.0];
    for (map, k_p) in [(KMap::L2, None), (KMap::Lp, Some(3.0))] {
        // c = (1 − β1)·g with β1 = 0: c = g.
        let lr = 0.5;
        let got = first_step(Lion { lr, beta1: 0.0, k_map: map, k_p, ..Lion::default() }, &p0, &c);
        assert!(got.iter().all(|x| x.is_finite()), "{map:?}: {got:?}");
        if got != p0 {
            // Subnormals kept: the step has unit dual norm, as for normal c.
            let p = k_p.unwrap_or(2.0);
            let q = p / (p - 1.0);
            let dual = got.iter().zip(&p0).map(|(x, y)| ((y - x) as f64 / lr).abs().powf(q)).sum::<f64>().powf(1.0 / q);
            assert!((dual - 1.0).abs() < 1e-5, "{map:?}: dual norm {dual}, {got:?}");
        }
    }
}

/// With decoupled decay λ and a constant gradient −u, Lion-K's fixed point is x = −∇K(−u)/λ:
/// the iterates approach the boundary of the dual-norm ball ‖x‖ ≤ 1/λ (K = ‖·‖₂: ‖x‖₂ = 1/λ along u;
/// K = ‖·‖₁, plain Lion: x = sign(u)/λ).
#[test]
fn decay_holds_the_iterates_on_the_dual_ball() {
    let u = [3.0f32, -4.0, 0.0, 12.0, 0.5];
    let g: Vec<f32> = u.iter().map(|x| -x).collect();
    let lambda = 0.5;
    let cases: [(KMap, Direction); 2] = [
        (KMap::L2, |u| {
            let n = u.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            u.iter().map(|&x| x as f64 / n).collect()
        }),
        (KMap::Sign, |u| u.iter().map(|&x| if x == 0.0 { 0.0 } else { (x as f64).signum() }).collect()),
    ];
    for (map, dir) in cases {
        let mut b = OptimizerBuilder::new(Lion { lr: 0.05, weight_decay: lambda, k_map: map, ..Lion::default() });
        let id = b.param("x", &[0.0; 5], &[5], b.default_group()).unwrap();
        let mut opt = b.build(&common::ctx()).unwrap();
        for _ in 0..400 {
            opt.write_grad(id, &g).unwrap();
            opt.step().unwrap();
        }
        let x = opt.read_param(id).unwrap();
        let want: Vec<f64> = dir(&u).iter().map(|d| d / lambda).collect();
        for (&a, &b) in x.iter().zip(&want) {
            assert!((a as f64 - b).abs() < 1e-3, "{map:?}: {x:?} vs {want:?}");
        }
    }
}

#[test]
fn k_map_hyperparameters_are_validated_and_named_as_the_contract_says() {
    let ok = Algorithm::from_name("lion", &serde_json::json!({"k_map": "lp", "k_p": 1.5})).unwrap();
    assert_eq!(ok.kernel().entry, "lion_k_norm_step");
    assert!(ok.needs_norm());
    let tanh = Algorithm::from_name("lion", &serde_json::json!({"k_map": "tanh", "k_scale": 4.0})).unwrap();
    assert_eq!(tanh.kernel().entry, "lion_k_step");
    assert_eq!(Algorithm::from_name("lion", &serde_json::json!({})).unwrap().kernel().entry, "lion_step");
    for bad in [
        serde_json::json!({"k_map": "lp"}),
        serde_json::json!({"k_map": "lp", "k_p": 1.0}),
        serde_json::json!({"k_map": "lp", "k_p": f64::NAN}),
        serde_json::json!({"k_map": "huber", "k_scale": 0.0}),
        serde_json::json!({"k_map": "huber", "k_scale": -1.0}),
        // Held in f32 by the shader: 1e-50 would be 0 (0/0 at c = 0), 1e39 Inf.
        serde_json::json!({"k_map": "huber", "k_scale": 1e-50}),
        serde_json::json!({"k_map": "tanh", "k_scale": 1e39}),
        serde_json::json!({"k_map": "lp", "k_p": 1e39}),
        serde_json::json!({"k_map": "cubic"}),
    ] {
        assert!(Algorithm::from_name("lion", &bad).is_err(), "{bad} accepted");
    }
}
