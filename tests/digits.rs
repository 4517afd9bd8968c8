//! Softmax regression on the UCI 8×8 digits (data/digits.csv, 1,797 images, CC BY 4.0): full-batch
//! training with AdamW, AdaHessian and Sophia-H at their reference defaults for the same number of
//! steps, the Hessian diagonal from one Hutchinson sample of the exact GPU HVP per step.
//!
//! What it documents, measured on lavapipe after 60 steps: AdamW 1.878, AdaHessian 0.356, Sophia-H
//! 2.301 (ln 10 = 2.303 at W = 0). At their defaults AdaHessian (lr 0.15) ends far below AdamW (lr 1e-3),
//! and Sophia-H (pytorch-optimizer's form: steps of at most lr·rho = 4e-6 per coordinate) ends ABOVE
//! AdamW: it cannot cover the distance in 60 steps. Both orderings are asserted, so a change in either
//! shows.

mod common;

use gpuopt::hvp::softmax::SoftmaxRegression;
use gpuopt::hvp::{hutchinson_estimate, HessianVectorProduct};
use gpuopt::optim::{AdaHessian, AdamW, Algorithm, OptimizerBuilder, Sophia, Stepper};

fn load() -> (Vec<f32>, Vec<u32>, usize, usize) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv")).unwrap();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Vec<f32> = line.split(',').map(|s| s.trim().parse().unwrap()).collect();
        assert_eq!(v.len(), 65);
        x.extend(v[..64].iter().map(|p| p / 16.0));
        x.push(1.0); // bias feature
        y.push(v[64] as u32);
    }
    let n = y.len();
    (x, y, n, 65)
}

fn train(alg: Algorithm, steps: usize) -> Vec<f32> {
    let ctx = common::ctx();
    let (x, y, n, d) = load();
    assert_eq!(n, 1797);
    let k = 10;
    let mut model = SoftmaxRegression::new(&ctx, &x, &y, n, d, k, 1e-4).unwrap();
    let needs_h = alg.needs_hessian();
    let mut b = OptimizerBuilder::new(alg);
    let id = b.param("W", &vec![0.0; d * k], &[d, k], b.default_group()).unwrap();
    let mut opt = b.build(&ctx).unwrap();
    let mut losses = Vec::new();
    let mut w = vec![0.0f32; d * k];
    for t in 0..steps {
        model.set_weights(&w).unwrap();
        let (loss, g) = model.loss_and_grad().unwrap();
        losses.push(loss);
        opt.write_grad(id, &g).unwrap();
        if needs_h {
            let diag =
                hutchinson_estimate(&ctx, &mut model as &mut dyn HessianVectorProduct, 1, 7 + t as u64, 0).unwrap();
            opt.write_hess_diag(id, &diag).unwrap();
        }
        opt.step().unwrap();
        w = opt.read_param(id).unwrap();
    }
    model.set_weights(&w).unwrap();
    losses.push(model.loss_and_grad().unwrap().0);
    losses
}

#[test]
fn digits_adahessian_beats_adamw_and_sophia_does_not_at_defaults() {
    let steps = 60;
    let adamw = train(AdamW::default().into(), steps);
    let adahessian = train(AdaHessian::default().into(), steps);
    let sophia =
        train(Sophia { variant: gpuopt::optim::algorithm::SophiaVariant::Sophiah, ..Sophia::default() }.into(), steps);
    let last = |v: &Vec<f32>| *v.last().unwrap();
    eprintln!(
        "final training loss after {steps} steps: adamw {}, adahessian {}, sophia-h {}",
        last(&adamw),
        last(&adahessian),
        last(&sophia)
    );
    let start = (10f32).ln();
    assert!((adamw[0] - start).abs() < 1e-4, "W = 0 gives loss ln 10");
    assert!(last(&adamw) < start, "AdamW reduces the loss");
    assert!(last(&adahessian) < last(&adamw), "AdaHessian below AdamW: {} vs {}", last(&adahessian), last(&adamw));
    assert!(
        last(&sophia) > last(&adamw),
        "documented: Sophia at lr 1e-4 stays above AdamW: {} vs {}",
        last(&sophia),
        last(&adamw)
    );
    assert!(last(&sophia) < start, "but it does descend");
}
