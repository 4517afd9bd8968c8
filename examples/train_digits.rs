//! Trains a 64-128-10 perceptron on the UCI 8×8 handwritten digits (1,797 images, `data/digits.csv`,
//! CC BY 4.0) with every optimizer family: AdamW, Lion, Signum, Muon (+AdamW for the biases),
//! AdaHessian, Sophia and Shampoo. Forward and backward run on the GPU (GEMMs plus the row kernels of
//! `gpuopt::mlp`); the gradients pass through the host on their way to each optimizer, which keeps the
//! loop the same for all of them (and is part of the time per step). Full-batch steps on an 80/20
//! train/test split; the same initialisation for every optimizer. AdaHessian and Sophia take
//! Hutchinson estimates of the Hessian diagonal from central differences of the GPU gradient.
//!
//! Prints a table (final train loss, test accuracy, ms per step) and writes `loss.png` (one curve per
//! optimizer) and `results.md` to the output folder.
//!
//! Run: `cargo run --release --example train_digits [-- --quick] [--out DIR]`
//! (`--quick`: 20 steps instead of 300, for CI; default DIR `target/train_digits`).

use gpuopt::hvp::{hutchinson_estimate, FiniteDifference};
use gpuopt::mlp::{param_shapes, Mlp};
use gpuopt::optim::shampoo::{Shampoo, ShampooConfig};
use gpuopt::optim::{
    AdaHessian, AdamW, Algorithm, Lion, MuonBuilder, MuonConfig, OptimizerBuilder, ParamId, Signum, Sophia, Stepper,
};
use gpuopt::parity::TestRng;
use gpuopt::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;

const D: usize = 64;
const HIDDEN: usize = 128;
const K: usize = 10;

fn load() -> (Vec<f32>, Vec<u32>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Vec<f32> = line.split(',').map(|s| s.trim().parse().expect("a number")).collect();
        x.extend(v[..D].iter().map(|p| p / 16.0));
        y.push(v[D] as u32);
    }
    (x, y)
}

/// Images (n×64) and labels.
type Split = (Vec<f32>, Vec<u32>);

/// Deterministic 80/20 split (a seeded shuffle).
fn split(x: &[f32], y: &[u32]) -> (Split, Split) {
    let n = y.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = TestRng::new(2024);
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let cut = n * 4 / 5;
    let take = |idx: &[usize]| {
        (idx.iter().flat_map(|&i| x[i * D..(i + 1) * D].to_vec()).collect(), idx.iter().map(|&i| y[i]).collect())
    };
    (take(&order[..cut]), take(&order[cut..]))
}

/// He initialisation for the weights, zero biases.
fn init() -> Vec<Vec<f32>> {
    let mut rng = TestRng::new(7);
    param_shapes(D, HIDDEN, K)
        .iter()
        .map(|s| {
            let n: usize = s.iter().product();
            if s.len() == 2 {
                rng.normals(n, (2.0 / s[0] as f32).sqrt())
            } else {
                vec![0.0; n]
            }
        })
        .collect()
}

/// An optimizer under test: every family is a Stepper over the four parameters (with the Hessian
/// optimizers' algorithm, which decides when a diagonal is due).
struct Opt(Box<dyn Stepper>, Vec<ParamId>, Option<Algorithm>);

fn build(ctx: &Context, name: &str, params: &[Vec<f32>]) -> Result<Opt> {
    let shapes = param_shapes(D, HIDDEN, K);
    let names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];
    let elementwise = |alg: Algorithm| -> Result<Opt> {
        let mut b = OptimizerBuilder::new(alg.clone());
        let g = b.default_group();
        let ids = (0..4).map(|i| b.param(names[i], &params[i], &shapes[i], g)).collect::<Result<Vec<_>>>()?;
        let hess = if alg.needs_hessian() { Some(alg) } else { None };
        Ok(Opt(Box::new(b.build(ctx)?), ids, hess))
    };
    match name {
        "AdamW" => elementwise(AdamW { lr: 3e-3, weight_decay: 1e-4, ..AdamW::default() }.into()),
        "Lion" => elementwise(Lion { lr: 1e-3, ..Lion::default() }.into()),
        "Signum" => elementwise(Signum { lr: 2e-3, ..Signum::default() }.into()),
        "AdaHessian" => elementwise(AdaHessian { lr: 0.05, ..AdaHessian::default() }.into()),
        "Sophia" => elementwise(Sophia { lr: 2e-3, weight_decay: 1e-4, ..Sophia::default() }.into()),
        "Muon" => {
            let mut b = MuonBuilder::new(MuonConfig { lr: 0.02, ..MuonConfig::default() }).aux_adamw(AdamW {
                lr: 3e-3,
                weight_decay: 0.0,
                ..AdamW::default()
            });
            // Matrices go to Muon, biases to the aux AdamW (MuonBuilder routes by shape).
            let ids = (0..4).map(|i| b.param(names[i], &params[i], &shapes[i])).collect::<Result<Vec<_>>>()?;
            Ok(Opt(Box::new(b.build(ctx)?), ids, None))
        }
        "Shampoo" => {
            let cfg = ShampooConfig { lr: 3e-3, block_size: 128, ..ShampooConfig::default() };
            let mut s = Shampoo::gpu(ctx, cfg)?;
            let ids = (0..4)
                .map(|i| Ok(s.add_named_param(names[i], &params[i], &shapes[i])?.into()))
                .collect::<Result<Vec<_>>>()?;
            Ok(Opt(Box::new(s), ids, None))
        }
        other => panic!("unknown optimizer {other}"),
    }
}

/// The Hutchinson estimate of diag(H) at `params` from central differences of the GPU gradient,
/// split back into the four tensors.
fn hessian_diag(ctx: &Context, mlp: &mut Mlp, params: &[Vec<f32>], seed: u64) -> Result<Vec<Vec<f32>>> {
    let flat: Vec<f32> = params.concat();
    let lens: Vec<usize> = params.iter().map(|p| p.len()).collect();
    let mut fd = FiniteDifference::new(
        flat,
        |w: &[f32], out: &mut [f32]| {
            let mut parts = Vec::new();
            let mut at = 0;
            for &l in &lens {
                parts.push(&w[at..at + l]);
                at += l;
            }
            mlp.set_params(&parts)?;
            let (_, g) = mlp.loss_and_grads()?;
            out.copy_from_slice(&g.concat());
            Ok(())
        },
        None,
    );
    let diag = hutchinson_estimate(ctx, &mut fd, 1, seed, 0)?;
    let mut out = Vec::new();
    let mut at = 0;
    for &l in &lens {
        out.push(diag[at..at + l].to_vec());
        at += l;
    }
    Ok(out)
}

struct Run {
    name: &'static str,
    losses: Vec<f32>,
    train_loss: f32,
    test_acc: f32,
    ms_per_step: f64,
}

fn train(
    ctx: &Context,
    name: &'static str,
    steps: usize,
    data: &mut (Mlp, Mlp),
    pb: &indicatif::ProgressBar,
) -> Result<Run> {
    let (train, test) = data;
    let mut params = init();
    let mut opt = build(ctx, name, &params)?;
    let mut losses = Vec::with_capacity(steps);
    let start = Instant::now();
    for t in 1..=steps {
        let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        train.set_params(&refs)?;
        let (loss, grads) = train.loss_and_grads()?;
        losses.push(loss);
        let Opt(s, ids, hess) = &mut opt;
        for (id, g) in ids.iter().zip(&grads) {
            s.write_grad(*id, g)?;
        }
        // AdaHessian uses a fresh diagonal every step; Sophia only when its EMA takes one.
        let wants = match hess {
            Some(Algorithm::AdaHessian(_)) => true,
            Some(Algorithm::Sophia(c)) => (t as u64).is_multiple_of(c.hess_interval),
            _ => false,
        };
        if wants {
            let diag = hessian_diag(ctx, train, &params, t as u64)?;
            for (id, d) in ids.iter().zip(&diag) {
                s.write_hess_diag(*id, d)?;
            }
        }
        s.step()?;
        for (i, id) in ids.iter().enumerate() {
            params[i] = s.read_param(*id)?;
        }
        pb.inc(1);
    }
    let ms_per_step = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    train.set_params(&refs)?;
    let (train_loss, _) = train.evaluate()?;
    test.set_params(&refs)?;
    let (_, test_acc) = test.evaluate()?;
    losses.push(train_loss);
    Ok(Run { name, losses, train_loss, test_acc, ms_per_step })
}

fn plot(runs: &[Run], path: &std::path::Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/data/DejaVuSans.ttf")),
    )
    .map_err(|_| "could not register the bundled font")?;
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let steps = runs.iter().map(|r| r.losses.len()).max().unwrap_or(1);
    let (lo, hi) =
        runs.iter().flat_map(|r| r.losses.iter()).fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let mut chart = ChartBuilder::on(&root)
        .caption("UCI digits, 64-128-10 perceptron: training loss", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0..steps, (lo.max(1e-7) * 0.8..hi * 1.2).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("step (full batch)")
        .y_desc("cross-entropy")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.losses.iter().enumerate().map(|(t, &l)| (t, l.max(1e-7))),
                color.stroke_width(2),
            ))?
            .label(r.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/train_digits")));
    std::fs::create_dir_all(&out)?;
    let steps = if quick { 20 } else { 300 };
    let ctx = Context::new()?;
    println!("adapter: {} ({:?}); {steps} full-batch steps per optimizer", ctx.info().name, ctx.info().backend);
    let (x, y) = load();
    let ((xtr, ytr), (xte, yte)) = split(&x, &y);
    println!("digits: {} train, {} test images", ytr.len(), yte.len());
    let mut data = (Mlp::new(&ctx, &xtr, &ytr, D, HIDDEN, K)?, Mlp::new(&ctx, &xte, &yte, D, HIDDEN, K)?);
    let names = ["AdamW", "Lion", "Signum", "Muon", "AdaHessian", "Sophia", "Shampoo"];
    let pb = indicatif::ProgressBar::new((steps * names.len()) as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut runs = Vec::new();
    for name in names {
        pb.set_message(name);
        runs.push(train(&ctx, name, steps, &mut data, &pb)?);
    }
    pb.finish_and_clear();
    let mut table = String::from("| optimizer | final train loss | test accuracy | ms / step |\n|---|---|---|---|\n");
    for r in &runs {
        table +=
            &format!("| {} | {:.2e} | {:.1}% | {:.1} |\n", r.name, r.train_loss, 100.0 * r.test_acc, r.ms_per_step);
    }
    println!("\n{table}");
    let md = out.join("results.md");
    std::fs::write(&md, format!("{steps} full-batch steps on {}\n\n{table}", ctx.info().name))?;
    let png = out.join("loss.png");
    plot(&runs, &png)?;
    println!("wrote {} and {}", md.display(), png.display());
    Ok(())
}
