//! The GPU perceptron behind examples/train_digits.rs: loss and gradients against the f64 CPU twin,
//! the twin against central differences, evaluation, and bad input.

mod common;

use gpuopt::mlp::{param_shapes, reference_loss_and_grads, Mlp};
use gpuopt::parity::TestRng;

fn setup(n: usize, d: usize, hidden: usize, k: usize) -> (Vec<f32>, Vec<u32>, Vec<Vec<f32>>) {
    let mut rng = TestRng::new(7);
    let x = rng.normals(n * d, 1.0);
    let labels: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % k) as u32).collect();
    let params = param_shapes(d, hidden, k).iter().map(|s| rng.normals(s.iter().product(), 0.5)).collect();
    (x, labels, params)
}

#[test]
fn gradients_match_the_f64_twin() {
    let ctx = common::ctx();
    let (n, d, hidden, k) = (37, 9, 13, 4);
    let (x, labels, params) = setup(n, d, hidden, k);
    let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let mut mlp = Mlp::new(&ctx, &x, &labels, d, hidden, k).unwrap();
    mlp.set_params(&refs).unwrap();
    let (loss, grads) = mlp.loss_and_grads().unwrap();
    let (want_loss, want) = reference_loss_and_grads(&x, &labels, (d, hidden, k), &refs);
    assert!((loss as f64 - want_loss).abs() <= 1e-5 * want_loss.abs(), "loss {loss} vs {want_loss}");
    for (i, (g, w)) in grads.iter().zip(&want).enumerate() {
        let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = g.iter().zip(w).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        // f32 sums of ≤ 37 products: a few ulp of the largest entry.
        assert!(err <= 1e-5 * scale, "gradient {i}: max error {err:e} (scale {scale:e})");
    }
}

#[test]
fn the_twin_matches_central_differences() {
    let (n, d, hidden, k) = (11, 5, 6, 3);
    let (x, labels, params) = setup(n, d, hidden, k);
    let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let (_, grads) = reference_loss_and_grads(&x, &labels, (d, hidden, k), &refs);
    for (t, g) in grads.iter().enumerate() {
        for idx in [0, g.len() / 2, g.len() - 1] {
            let h = 1e-3f32;
            let mut plus = params.clone();
            plus[t][idx] += h;
            let mut minus = params.clone();
            minus[t][idx] -= h;
            let f = |p: &Vec<Vec<f32>>| {
                let r: Vec<&[f32]> = p.iter().map(|v| v.as_slice()).collect();
                reference_loss_and_grads(&x, &labels, (d, hidden, k), &r).0
            };
            // The perturbation is exact in f32 only to rounding: use the realised step.
            let step = (plus[t][idx] as f64 - minus[t][idx] as f64) / 2.0;
            let fd = (f(&plus) - f(&minus)) / (2.0 * step);
            assert!((fd - g[idx]).abs() <= 1e-4 * (1.0 + g[idx].abs()), "param {t}[{idx}]: {fd} vs {}", g[idx]);
        }
    }
}

#[test]
fn evaluation_and_bad_input() {
    let ctx = common::ctx();
    let (x, labels, _) = setup(20, 4, 3, 2);
    let mut mlp = Mlp::new(&ctx, &x, &labels, 4, 3, 2).unwrap();
    // All-zero parameters: uniform predictions, loss ln 2.
    let (loss, _) = mlp.evaluate().unwrap();
    assert!((loss - 2f32.ln()).abs() < 1e-6);
    assert!(Mlp::new(&ctx, &x[..10], &labels, 4, 3, 2).is_err());
    assert!(Mlp::new(&ctx, &x, &[5; 20], 4, 3, 2).is_err());
    assert!(mlp.set_params(&[&[0.0; 12]]).is_err());
    assert!(mlp.set_params(&[&[0.0; 11], &[0.0; 3], &[0.0; 6], &[0.0; 2]]).is_err());
    // A batch or a class count whose per-invocation loops would pass the adapter's loop budget
    // (llvmpipe stops them at 65,535, silently) is refused: here a budget of 23 (ContextOptions; each check adds 8 for loop bookkeeping).
    let small = common::ctx_with(gpuopt::ContextOptions { loop_limit: Some(23), ..Default::default() });
    let e = Mlp::new(&small, &x, &labels, 4, 3, 2).err().expect("refused");
    assert!(e.to_string().contains("batch of 20 rows") && e.to_string().contains("loop iterations"), "{e}");
    let (x15, labels15, _) = setup(15, 4, 3, 6);
    let e = Mlp::new(&small, &x15, &labels15, 4, 3, 6).err().expect("refused");
    assert!(e.to_string().contains("6 classes"), "{e}");
    let (x15, labels15, _) = setup(15, 4, 3, 5);
    assert!(Mlp::new(&small, &x15, &labels15, 4, 3, 5).is_ok(), "15 rows and 3 x 5 class steps fit");
}
