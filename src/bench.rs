//! Benchmark suites behind `gpuopt bench` and the criterion benches. Every figure is reported beside a
//! limit measured in the same run: elementwise updates as effective bandwidth (the bytes the update
//! must move, ALGORITHMS.md §3, over its time) against gpuopt's vec4 copy kernel moving the same bytes;
//! the multi-tensor arena against one flat tensor of the same total size.

use crate::error::{Error, Result};
use crate::gpu::{BoundKernel, Context, Timing, WORKGROUP_SIZE};
use crate::kernels::COPY_VEC4;
use crate::optim::distributed_lion::{Aggregation, DistributedLion, DistributedLionConfig};
use crate::optim::{Algorithm, Optimizer, OptimizerBuilder, ParamId, Stepper};
use crate::parity::TestRng;
use serde::Serialize;

/// One benchmark result.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Suite name.
    pub suite: String,
    /// Kernel (an optimizer's replay name, `multi_tensor_<name>`, ...).
    pub kernel: String,
    /// Problem shape (elements; for multi-tensor records the total).
    pub shape: Vec<usize>,
    /// Median seconds per step.
    pub median_s: f64,
    /// Effective bandwidth in GB/s (memory-bound kernels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    /// Arithmetic throughput in GFLOP/s (compute-bound kernels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// What it is compared with, measured in the same run.
    pub baseline: String,
    /// The baseline's median seconds.
    pub baseline_median_s: f64,
    /// This kernel's throughput over the baseline's (higher is better; 1.0 = at the limit): the
    /// baseline's time over the kernel's, or, where `timing` says "median of paired ratios", the
    /// median of that ratio over batches timed in alternation ([`crate::gpu::PairedTiming`]).
    pub ratio: f64,
    /// Tensors in the step (multi-tensor records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<usize>,
    /// Relative Frobenius error against the f64 oracle (matrix functions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rel_error: Option<f64>,
    /// Items per second (Hutchinson samples per second for the estimate records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_second: Option<f64>,
    /// Adapter the figures came from.
    pub adapter: String,
    /// "timestamps" or "wall-clock"; then ", median of paired ratios" where that is the ratio.
    pub timing: String,
}

impl Record {
    /// A record of `kernel` beside `baseline`, both measured in the same run; the ratio is the
    /// kernel's throughput over the baseline's (= baseline time / kernel time for the same work).
    ///
    /// ```
    /// let r = gpuopt::bench::Record::measured("elementwise", "adamw", vec![1 << 20], 2e-3, "copy", 1.5e-3)
    ///     .gbps(28.0 * (1 << 20) as f64);
    /// assert_eq!(r.ratio, 0.75);
    /// assert!((r.gbps.unwrap() - 14.68).abs() < 0.01);
    /// ```
    pub fn measured(
        suite: &str,
        kernel: impl Into<String>,
        shape: Vec<usize>,
        median_s: f64,
        baseline: impl Into<String>,
        baseline_median_s: f64,
    ) -> Self {
        Record {
            suite: suite.into(),
            kernel: kernel.into(),
            shape,
            median_s,
            gbps: None,
            gflops: None,
            baseline: baseline.into(),
            baseline_median_s,
            ratio: baseline_median_s / median_s,
            tensors: None,
            rel_error: None,
            per_second: None,
            adapter: String::new(),
            timing: String::new(),
        }
    }

    /// Effective bandwidth of `bytes` moved per run.
    pub fn gbps(mut self, bytes: f64) -> Self {
        self.gbps = Some(bytes / self.median_s / 1e9);
        self
    }

    /// Arithmetic throughput of `flops` per run.
    pub fn gflops(mut self, flops: f64) -> Self {
        self.gflops = Some(flops / self.median_s / 1e9);
        self
    }

    /// Tensors in the step.
    pub fn tensors(mut self, n: usize) -> Self {
        self.tensors = Some(n);
        self
    }

    /// `items` per run, as a rate.
    pub fn rate(mut self, items: f64) -> Self {
        self.per_second = Some(items / self.median_s);
        self
    }

    /// Relative error against an oracle.
    pub fn error(mut self, e: f64) -> Self {
        self.rel_error = Some(e);
        self
    }

    /// Where and how it was timed.
    pub fn on(mut self, adapter: impl Into<String>, timing: impl Into<String>) -> Self {
        self.adapter = adapter.into();
        self.timing = timing.into();
        self
    }

    /// The ratio as the median over batches timed in alternation ([`crate::gpu::PairedTiming`])
    /// instead of the ratio of the medians; `timing` says so.
    pub fn paired(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self.timing = format!("{}, median of paired ratios", self.timing);
        self
    }
}

/// The suites `gpuopt bench` knows.
pub const SUITES: &[&str] = &["elementwise", "gemm", "ns", "hutchinson", "roots"];

/// The vec4 copy kernel over `n` f32 (rounded up to a multiple of 4): the bandwidth baseline. Copies
/// larger than one storage binding are split into chunks, one dispatch each.
pub struct CopyKernel {
    chunks: Vec<(BoundKernel, u32, [wgpu::Buffer; 2])>,
}

impl CopyKernel {
    /// Allocates sources and destinations of `n` f32 in all.
    pub fn new(ctx: &Context, n: usize) -> Result<Self> {
        let max_vec4 = (ctx.max_binding_bytes() / 16) as usize;
        let mut left = n.div_ceil(4).max(1);
        let mut chunks = Vec::new();
        while left > 0 {
            let vec4s = left.min(max_vec4);
            left -= vec4s;
            let src = ctx.storage_buffer("copy source", 16 * vec4s as u64)?;
            let dst = ctx.storage_buffer("copy destination", 16 * vec4s as u64)?;
            let bound = ctx.bind(&COPY_VEC4, &[&src, &dst])?;
            chunks.push((bound, (vec4s as u32).div_ceil(WORKGROUP_SIZE), [src, dst]));
        }
        Ok(CopyKernel { chunks })
    }

    /// Records one copy.
    pub fn record(&self, ctx: &Context, pass: &mut wgpu::ComputePass<'_>) {
        for (bound, workgroups, _) in &self.chunks {
            bound.record(ctx, pass, *workgroups);
        }
    }
}

/// The parameter shapes of GPT-2 small (124M parameters, 148 tensors) at width `d` and vocabulary
/// `vocab` (768 and 50257 for the real model).
pub fn gpt2_shapes(d: usize, vocab: usize) -> Vec<Vec<usize>> {
    let mut s = vec![vec![vocab, d], vec![1024, d]];
    for _ in 0..12 {
        s.extend([
            vec![d],
            vec![d],
            vec![d, 3 * d],
            vec![3 * d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d],
            vec![d, 4 * d],
            vec![4 * d],
            vec![4 * d, d],
            vec![d],
        ]);
    }
    s.extend([vec![d], vec![d]]);
    s
}

/// An optimizer over tensors of `shapes` with random parameters and gradients, uniform written for
/// step 1 (so `record_update` can be timed on its own).
pub fn optimizer_with_grads(ctx: &Context, algorithm: &Algorithm, shapes: &[Vec<usize>]) -> Result<Optimizer> {
    let mut rng = TestRng::new(7);
    let mut b = OptimizerBuilder::new(algorithm.clone());
    let mut ids = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        let n: usize = s.iter().product();
        ids.push(b.param(&format!("p{i}"), &rng.normals(n, 0.1), s, b.default_group())?);
    }
    let mut opt = b.build(ctx)?;
    for (id, s) in ids.into_iter().zip(shapes) {
        let n: usize = s.iter().product();
        opt.write_grad(id, &rng.normals(n, 0.01))?;
    }
    opt.write_hyper(1);
    Ok(opt)
}

/// Records `iters` repetitions into one compute pass, submits it and waits: the wall time of the
/// lot (criterion's `iter_custom`).
pub fn gpu_time(ctx: &Context, iters: u64, mut record: impl FnMut(&mut wgpu::ComputePass<'_>)) -> std::time::Duration {
    let mut enc = ctx.encoder("criterion");
    {
        let mut pass = crate::gpu::compute_pass(&mut enc, "criterion");
        for _ in 0..iters {
            record(&mut pass);
        }
    }
    let start = std::time::Instant::now();
    let index = ctx.submit(enc);
    if let Err(e) = ctx.wait_for(Some(index)) {
        log::error!("gpu_time: {e}");
    }
    start.elapsed()
}

/// Times one optimizer update (no guard) per repetition.
pub fn time_update(ctx: &Context, opt: &Optimizer, reps: usize, batches: usize) -> Result<Timing> {
    ctx.time(reps, batches, |enc| {
        opt.record_update(enc);
    })
}

/// Splits any tensor larger than one storage binding into row blocks that fit (lavapipe's binding
/// limit is 128 MiB, smaller than GPT-2's 154 MB token embedding); other shapes are kept.
pub fn fit_shapes(ctx: &Context, shapes: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let max = (ctx.max_binding_bytes() / 4) as usize / 64 * 64;
    let mut out = Vec::new();
    for s in shapes {
        let n: usize = s.iter().product();
        if n <= max || s.len() < 2 {
            out.push(s.clone());
            continue;
        }
        let row: usize = s[1..].iter().product();
        let rows_per = (max / row).max(1);
        let mut r = 0;
        while r < s[0] {
            let k = rows_per.min(s[0] - r);
            let mut piece = s.clone();
            piece[0] = k;
            out.push(piece);
            r += k;
        }
    }
    out
}

/// Splits `total` elements into the fewest equal tensors that each fit one storage binding.
pub fn flat_shapes(ctx: &Context, total: usize) -> Vec<Vec<usize>> {
    let max = (ctx.max_binding_bytes() / 4) as usize / 64 * 64;
    let parts = total.div_ceil(max).max(1);
    let each = total.div_ceil(parts);
    let mut v = vec![vec![each]; parts - 1];
    v.push(vec![total - each * (parts - 1)]);
    v
}

fn progress(n: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(n);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// Runs the suites (`None` = all); `quick` uses fewer repetitions and smaller sizes.
pub fn run(ctx: &Context, suite: Option<&str>, quick: bool, show_progress: bool) -> Result<Vec<Record>> {
    match suite {
        None => {
            let mut all = elementwise(ctx, quick, show_progress)?;
            all.extend(gemm(ctx, quick, show_progress)?);
            all.extend(ns(ctx, quick, show_progress)?);
            all.extend(hutchinson(ctx, quick, show_progress)?);
            all.extend(roots(ctx, quick, show_progress)?);
            Ok(all)
        }
        Some("elementwise") => elementwise(ctx, quick, show_progress),
        Some("gemm") => gemm(ctx, quick, show_progress),
        Some("ns") => ns(ctx, quick, show_progress),
        Some("hutchinson") => hutchinson(ctx, quick, show_progress),
        Some("roots") => roots(ctx, quick, show_progress),
        Some(other) => Err(Error::Invalid(format!("unknown suite {other:?} (known: {})", SUITES.join(", ")))),
    }
}

/// The elementwise suite: every fused update beside the copy kernel, the multi-tensor arena beside
/// one flat tensor, and the CPU reference for contrast.
pub fn elementwise(ctx: &Context, quick: bool, show_progress: bool) -> Result<Vec<Record>> {
    let adapter = ctx.info().name.clone();
    let sizes: &[usize] = if quick { &[1 << 20] } else { &[1 << 20, 1 << 24] };
    let batches = if quick { 3 } else { 7 };
    let reps_for = |n: usize| match (quick, n >= 1 << 24) {
        (true, _) => 3,
        (false, true) => 5,
        (false, false) => 20,
    };
    // Every replay optimizer at its defaults, and Lion-K with an elementwise and a per-tensor map.
    let mut algorithms: Vec<(String, Algorithm)> = (crate::optim::algorithm::NAMES.iter())
        .map(|n| Ok((n.to_string(), Algorithm::from_name(n, &serde_json::json!({}))?)))
        .collect::<Result<_>>()?;
    for (name, hyper) in
        [("lion_k_tanh", serde_json::json!({"k_map": "tanh"})), ("lion_k_l2", serde_json::json!({"k_map": "l2"}))]
    {
        algorithms.push((name.into(), Algorithm::from_name("lion", &hyper)?));
    }
    let multi = ["adamw", "lion"];
    // (matrices, rows, cols) of the stacked DASGO records: many small, and a transformer's dozen.
    let dasgo_stacks: &[(usize, usize, usize)] =
        if quick { &[(48, 128, 128)] } else { &[(48, 128, 128), (12, 768, 768)] };
    let pb = progress((algorithms.len() * sizes.len() + multi.len() + 6 + dasgo_stacks.len()) as u64, show_progress);
    let mut out = Vec::new();
    for &n in sizes {
        for (name, alg) in &algorithms {
            pb.set_message(format!("{name} n={n}"));
            let bytes = alg.bytes_per_param() * n;
            let reps = reps_for(n);
            let copy = CopyKernel::new(ctx, bytes / 8)?;
            let base = ctx.time(reps, batches, |enc| copy.record(ctx, enc))?;
            let opt = optimizer_with_grads(ctx, alg, &[vec![n]])?;
            let t = time_update(ctx, &opt, reps, batches)?;
            drop(opt);
            out.push(
                Record::measured("elementwise", name, vec![n], t.median_s, "copy", base.median_s)
                    .gbps(bytes as f64)
                    .on(adapter.clone(), t.method),
            );
            pb.inc(1);
        }
    }
    // Distributed Lion, 4 workers on one GPU: the whole step (compress, aggregate, apply) beside
    // the copy kernel moving the same bytes.
    let n = sizes[0];
    for (variant, name) in
        [(Aggregation::Mavo, "distributed_lion_mavo/4"), (Aggregation::Avg, "distributed_lion_avg/4")]
    {
        pb.set_message(format!("{name} n={n}"));
        let config = DistributedLionConfig { variant, ..Default::default() };
        let mut opt = DistributedLion::new(ctx, config, &vec![0.5; n], 4)?;
        let mut rng = TestRng::new(7);
        for w in 0..4 {
            opt.write_grad(w, &rng.normals(n, 1.0))?;
        }
        opt.write_uniform();
        let bytes = opt.bytes_per_param() * n as f64;
        let copy = CopyKernel::new(ctx, bytes as usize / 8)?;
        let base = ctx.time(reps_for(n), batches, |enc| copy.record(ctx, enc))?;
        let t = ctx.time(reps_for(n), batches, |enc| {
            opt.record_step(enc);
        })?;
        out.push(
            Record::measured("elementwise", name, vec![n], t.median_s, "copy", base.median_s)
                .gbps(bytes)
                .on(adapter.clone(), t.method),
        );
        pb.inc(1);
    }
    // DASGO on a 1024 x (n / 1024) matrix at its defaults: its passes move about 28 bytes per
    // parameter (g read twice, m read twice and written, p read and written; the column sums' bands
    // add 8 bytes per band and column, under 1%), beside the copy kernel moving those bytes.
    {
        let (rows, cols) = (1024, n / 1024);
        pb.set_message(format!("dasgo {rows}x{cols}"));
        let mut rng = TestRng::new(8);
        let mut opt = crate::optim::Dasgo::gpu(ctx, Default::default())?;
        let id = opt.add_param("w", &rng.normals(n, 1.0), &[rows, cols])?;
        opt.write_grad(id, &rng.normals(n, 1.0))?;
        opt.prepare()?;
        let bytes = 28 * n;
        let copy = CopyKernel::new(ctx, bytes / 8)?;
        let base = ctx.time(reps_for(n), batches, |enc| copy.record(ctx, enc))?;
        let t = ctx.time(reps_for(n), batches, |enc| opt.record_step(enc))?;
        out.push(
            Record::measured("elementwise", "dasgo", vec![rows, cols], t.median_s, "copy", base.median_s)
                .gbps(bytes as f64)
                .on(adapter.clone(), t.method),
        );
        pb.inc(1);
    }
    // DASGO over b same-shape matrices: one optimizer stacking them (five dispatches a step) beside
    // b optimizers holding one each (five dispatches apiece), recorded into one submission alike.
    for &(b, rows, cols) in dasgo_stacks {
        pb.set_message(format!("dasgo stack {b}x{rows}x{cols}"));
        let mut rng = TestRng::new(9);
        let (p0, g) = (rng.normals(rows * cols, 1.0), rng.normals(rows * cols, 1.0));
        let mut stack = crate::optim::Dasgo::gpu(ctx, Default::default())?;
        let mut apart = Vec::new();
        for i in 0..b {
            let id = stack.add_param(&format!("w{i}"), &p0, &[rows, cols])?;
            stack.write_grad(id, &g)?;
            let mut one = crate::optim::Dasgo::gpu(ctx, Default::default())?;
            let id = one.add_param("w", &p0, &[rows, cols])?;
            one.write_grad(id, &g)?;
            one.prepare()?;
            apart.push(one);
        }
        stack.prepare()?;
        let reps = reps_for(b * rows * cols);
        let base = ctx.time(reps, batches, |enc| apart.iter().for_each(|one| one.record_step(enc)))?;
        let t = ctx.time(reps, batches, |enc| stack.record_step(enc))?;
        out.push(
            Record::measured(
                "elementwise",
                "dasgo_stack",
                vec![b, rows, cols],
                t.median_s,
                "dasgo_apart",
                base.median_s,
            )
            .gbps((28 * b * rows * cols) as f64)
            .on(adapter.clone(), t.method),
        );
        pb.inc(1);
    }
    // REG (RACS) and AuON on a 1024 × (n / 1024) matrix (the largest size) at their defaults,
    // beside the copy kernel moving their bytes per parameter: REG reads g in each of its row,
    // column and norm passes and g, p and writes p in its update (24 B; the statistics add
    // O(rows + cols)); AuON reads g and m and writes m and the update u, reads u for each of its
    // two norms, and reads u and p and writes p (36 B).
    let n = *sizes.last().expect("a size");
    for (name, bytes_per) in [("reg", 24), ("auon", 36)] {
        let (rows, cols) = (1024, n / 1024);
        pb.set_message(format!("{name} {rows}x{cols}"));
        let mut rng = TestRng::new(9);
        let (p0, g) = (rng.normals(n, 1.0), rng.normals(n, 1.0));
        let record: Box<dyn Fn(&mut wgpu::ComputePass<'_>)> = if name == "reg" {
            let mut b = crate::optim::RegBuilder::new(Default::default());
            let id = b.param("w", &p0, &[rows, cols])?;
            let mut opt = b.build(ctx)?;
            opt.write_grad(id, &g)?;
            opt.write_uniforms(2);
            Box::new(move |enc| opt.record_step(enc))
        } else {
            let mut b = crate::optim::AuonBuilder::new(Default::default(), false);
            let id = b.param("w", &p0, &[rows, cols])?;
            let mut opt = b.build(ctx)?;
            opt.write_grad(id, &g)?;
            opt.write_uniforms();
            Box::new(move |enc| opt.record_step(enc))
        };
        let bytes = bytes_per * n;
        let copy = CopyKernel::new(ctx, bytes / 8)?;
        let base = ctx.time(reps_for(n), batches, |enc| copy.record(ctx, enc))?;
        let t = ctx.time(reps_for(n), batches, |enc| record(enc))?;
        out.push(
            Record::measured("elementwise", name, vec![rows, cols], t.median_s, "copy", base.median_s)
                .gbps(bytes as f64)
                .on(adapter.clone(), t.method),
        );
        pb.inc(1);
    }
    // Many tensors, one dispatch: GPT-2-small shapes against one flat tensor of the same size.
    let full = if quick { gpt2_shapes(192, 50257 / 4) } else { gpt2_shapes(768, 50257) };
    let shapes = fit_shapes(ctx, &full);
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    for name in multi {
        pb.set_message(format!("multi_tensor_{name} ({} tensors)", shapes.len()));
        let alg = Algorithm::from_name(name, &serde_json::json!({}))?;
        let reps = if quick { 2 } else { 3 };
        let flat_opt = optimizer_with_grads(ctx, &alg, &flat_shapes(ctx, total))?;
        let flat = time_update(ctx, &flat_opt, reps, batches.min(5))?;
        drop(flat_opt);
        let opt = optimizer_with_grads(ctx, &alg, &shapes)?;
        let t = time_update(ctx, &opt, reps, batches.min(5))?;
        drop(opt);
        out.push(
            Record::measured(
                "elementwise",
                format!("multi_tensor_{name}"),
                vec![total],
                t.median_s,
                format!("flat_{name}"),
                flat.median_s,
            )
            .gbps((alg.bytes_per_param() * total) as f64)
            .tensors(shapes.len())
            .on(adapter.clone(), t.method),
        );
        pb.inc(1);
    }
    // The CPU reference for contrast (same AdamW step, one thread).
    pb.set_message("cpu reference adamw");
    let n = 1 << 20;
    let alg = Algorithm::from_name("adamw", &serde_json::json!({}))?;
    let gpu = optimizer_with_grads(ctx, &alg, &[vec![n]])?;
    let g = time_update(ctx, &gpu, reps_for(n), batches)?;
    let mut b = OptimizerBuilder::new(alg.clone());
    let id = b.param("p", &vec![0.5; n], &[n], b.default_group())?;
    let mut cpu = b.build_cpu()?;
    cpu.write_grad(id, &vec![0.01; n])?;
    let mut times = Vec::new();
    for _ in 0..batches {
        let start = std::time::Instant::now();
        cpu.step()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let c = times[times.len() / 2];
    out.push(
        Record::measured("elementwise", "cpu_reference_adamw", vec![n], c, "adamw", g.median_s)
            .gbps((alg.bytes_per_param() * n) as f64)
            .on("CPU (one thread)", "wall-clock"),
    );
    pb.inc(1);
    pb.finish_and_clear();
    Ok(out)
}

/// The gemm suite: square f32 GEMMs in GFLOP/s beside the WGSL FMA-throughput kernel (the adapter's
/// arithmetic limit as WGSL reaches it) and the CPU's sgemm (ndarray's product), in the same run.
/// On GPUs the tile kernels are timed without split-K (records `gemm_f32_nn/t64`, `/t128` and
/// `/t128_prefetch`) beside
/// the automatic choice (`/auto`: kernel and split-K as `GemmDesc` picks them) and a 4-way split-K,
/// and n = 4096 is added;
/// on CPU adapters the 64×64 kernel and, where subgroups are 8 lanes wide, the packed-panel kernel
/// (`/panel`, packing included: the automatic choice there).
pub fn gemm(ctx: &Context, quick: bool, show_progress: bool) -> Result<Vec<Record>> {
    use crate::kernels::gemm::{FmaPeak, GemmDesc, GemmKernel, GemmPlan};
    let adapter = ctx.info().name.clone();
    let on_gpu = !ctx.info().is_cpu();
    let sizes: &[usize] = match (quick, on_gpu) {
        (true, _) => &[256],
        (false, false) => &[256, 512, 1024, 2048],
        (false, true) => &[256, 512, 1024, 2048, 4096],
    };
    let panel = ctx.info().subgroup_size == Some(crate::kernels::gemm::PANEL_LANES);
    let kernels: &[(GemmKernel, usize, &str)] = if on_gpu {
        &[
            (GemmKernel::Tile64, 1, "gemm_f32_nn/t64"),
            (GemmKernel::Tile128, 1, "gemm_f32_nn/t128"),
            (GemmKernel::Tile128Prefetch, 1, "gemm_f32_nn/t128_prefetch"),
            (GemmKernel::Auto, 0, "gemm_f32_nn/auto"),
            (GemmKernel::Auto, 4, "gemm_f32_nn/auto_split4"),
        ]
    } else if panel {
        &[(GemmKernel::Tile64, 1, "gemm_f32_nn/t64"), (GemmKernel::Panel, 1, "gemm_f32_nn/panel")]
    } else {
        &[(GemmKernel::Tile64, 1, "gemm_f32_nn/t64")]
    };
    let pb = progress(((kernels.len() + 1) * sizes.len()) as u64, show_progress);
    // On a GPU, enough workgroups to fill a large one (132 SMs x 16), one FMA run per batch.
    let gpu_fma = if on_gpu { Some(FmaPeak::new(ctx, 2048, 4096)?) } else { None };
    let mut out = Vec::new();
    let mut rng = TestRng::new(3);
    for &n in sizes {
        let a = crate::Tensor::from_slice(ctx, &rng.uniforms(n * n, 1.0), &[n, n])?;
        let b = crate::Tensor::from_slice(ctx, &rng.uniforms(n * n, 1.0), &[n, n])?;
        let c = crate::Tensor::zeros(ctx, &[n, n])?;
        let mut best = f64::INFINITY;
        for &(kernel, split_k, name) in kernels {
            pb.set_message(format!("{name} {n}"));
            let desc = GemmDesc { kernel, split_k, ..GemmDesc::new(n, n, n) };
            let plan = GemmPlan::new(ctx, desc, &a, &b, &c)?;
            let reps = match (n, on_gpu) {
                (_, true) if n <= 1024 => 20,
                (_, true) => 5,
                (2048.., false) => 1,
                (1024.., false) => 2,
                _ => 5,
            };
            // The FMA kernel is timed in batches alternating with the product's, so a slow spell of a
            // shared machine slows both sides of a pair alike. On a CPU adapter its run does the
            // batch's FLOPs (1,024 steps per invocation, as many 256-invocation workgroups as that
            // takes, at least 64: fewer ran measurably below the limit), so both sides of a pair last
            // about as long: a fixed 34-GFLOP run had taken ~0.4 s against the 5-10 ms of five 256^2
            // products.
            let sized;
            let fma = match &gpu_fma {
                Some(f) => f,
                None => {
                    let per_group = 256.0 * 1024.0 * 64.0;
                    let groups = (reps as f64 * desc.flops() / per_group).round().max(64.0);
                    sized = FmaPeak::new(ctx, groups as u32, 1024)?;
                    &sized
                }
            };
            let t = ctx.time_paired(
                (reps, |enc: &mut wgpu::ComputePass<'_>| {
                    plan.record(enc);
                }),
                (1, |enc: &mut wgpu::ComputePass<'_>| fma.record(ctx, enc)),
                if quick { 3 } else { 5 },
            )?;
            best = best.min(t.a.median_s);
            // The FMA kernel's time for the same FLOPs: the ratio is then GEMM GFLOP/s over the FMA
            // limit, the median over the pairs (their batch-time ratio scaled to equal FLOPs).
            let same_flops = desc.flops() / fma.flops;
            out.push(
                Record::measured("gemm", name, vec![n, n, n], t.a.median_s, "fma_peak", t.b.median_s * same_flops)
                    .gflops(desc.flops())
                    .on(adapter.clone(), t.a.method)
                    .paired(t.ratio * reps as f64 * same_flops),
            );
            pb.inc(1);
        }
        let flops = GemmDesc::new(n, n, n).flops();
        pb.set_message(format!("cpu sgemm {n}"));
        let ca = ndarray::Array2::<f32>::from_shape_vec((n, n), rng.uniforms(n * n, 1.0))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let cb = ndarray::Array2::<f32>::from_shape_vec((n, n), rng.uniforms(n * n, 1.0))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut times = Vec::new();
        for _ in 0..3 {
            let start = std::time::Instant::now();
            let cc = ca.dot(&cb);
            times.push(start.elapsed().as_secs_f64());
            std::hint::black_box(cc);
        }
        times.sort_by(f64::total_cmp);
        let cpu = times[1];
        out.push(
            Record::measured("gemm", "cpu_sgemm_ndarray", vec![n, n, n], cpu, "best_gemm_f32_nn", best)
                .gflops(flops)
                .on("CPU", "wall-clock"),
        );
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// The ns suite: NS5 on transformer shapes beside 15 × one GEMM of the update's size (the r×r by r×c
/// product, 2r²c FLOPs) in the same run, the Gram half-product beside the full X·Xᵀ, and one ASGO step
/// beside one Muon step on the single-matrix shapes.
/// Goals (issue 3): NS5 ≤ 1.10 × 15 GEMMs with fused epilogues (ratio ≥ 0.91) and ≤ 0.75 × with the
/// symmetric half-products (ratio ≥ 1.33); the Gram kernel near 2× the full product.
pub fn ns(ctx: &Context, quick: bool, show_progress: bool) -> Result<Vec<Record>> {
    use crate::kernels::gemm::{GemmDesc, GemmPlan};
    use crate::kernels::newton_schulz::{Ns5Plan, NS5_COEFFICIENTS};
    let adapter = ctx.info().name.clone();
    let cases: Vec<(usize, usize, usize)> = if quick {
        vec![(1, 256, 256), (2, 128, 256)]
    } else {
        vec![(1, 768, 768), (1, 768, 3072), (1, 1024, 4096), (12, 768, 768)]
    };
    // Five batches: this suite's medians were swung by a slow spell in one of three.
    let batches = if quick { 2 } else { 5 };
    let singles = cases.iter().filter(|c| c.0 == 1).count();
    // A stack of same-shape matrices as one ASGO chain beside one ASGO per matrix: the batched cases,
    // and 48 small matrices, where dispatches rather than FLOPs set the time.
    let stacks: Vec<_> = cases.iter().copied().filter(|c| c.0 > 1).chain([(48, 128, 128)]).collect();
    let pb = progress((cases.len() + 1 + singles + stacks.len()) as u64, show_progress);
    let mut rng = TestRng::new(5);
    let mut out = Vec::new();
    for &(b, m, n) in &cases {
        pb.set_message(format!("ns5 {b}x{m}x{n}"));
        let (r, c) = (m.min(n), m.max(n));
        let g = crate::Tensor::from_slice(ctx, &rng.uniforms(b * m * n, 1.0), &[b, m, n])?;
        let plan = Ns5Plan::new(ctx, &g, 5, NS5_COEFFICIENTS)?;
        let desc = GemmDesc { batch: b, ..GemmDesc::new(r, c, r) };
        let a = crate::Tensor::from_slice(ctx, &rng.uniforms(b * r * r, 1.0), &[b, r, r])?;
        let x = crate::Tensor::from_slice(ctx, &rng.uniforms(b * r * c, 1.0), &[b, r, c])?;
        let y = crate::Tensor::zeros(ctx, &[b, r, c])?;
        let gp = GemmPlan::new(ctx, desc, &a, &x, &y)?;
        // NS5 and the baseline alternate batch by batch (a shared CPU's slow spells, lasting seconds,
        // then hit both sides of a pair alike; timed one side after the other, a spell swung the
        // ratio of medians by 1.5x from run to run). The baseline's 15 products are recorded into one
        // submission, as NS5's are: both sides pay the same per-submission cost.
        let t = ctx.time_paired(
            (1, |enc: &mut wgpu::ComputePass<'_>| {
                plan.record(enc);
            }),
            (15, |enc: &mut wgpu::ComputePass<'_>| {
                gp.record(enc);
            }),
            batches,
        )?;
        let nominal = 5.0 * (4.0 * (r * r * c) as f64 + 2.0 * (r * r * r) as f64) * b as f64;
        let record = |kernel: &str| {
            Record::measured("ns", kernel, vec![b, m, n], t.a.median_s, "15x_gemm", 15.0 * t.b.median_s)
                .gflops(nominal)
                .on(adapter.clone(), t.a.method)
        };
        out.push(record("newton_schulz5"));
        // The median of the pairs' ratios (each pair ran back to back): the estimate least swung by
        // slow spells. Its times are the medians above.
        out.push(record("newton_schulz5/paired").paired(t.ratio));
        pb.inc(1);
    }
    // The Gram half-product beside the full X·Xᵀ.
    let n = if quick { 256 } else { 1024 };
    pb.set_message(format!("gram {n}"));
    let x = crate::Tensor::from_slice(ctx, &rng.uniforms(n * n, 1.0), &[n, n])?;
    let cbuf = crate::Tensor::zeros(ctx, &[n, n])?;
    let half = GemmPlan::new(ctx, GemmDesc::gram(n, n), &x, &x, &cbuf)?;
    let full = GemmPlan::new(ctx, GemmDesc { trans_b: true, ..GemmDesc::new(n, n, n) }, &x, &x, &cbuf)?;
    let t = ctx.time_paired(
        (1, |enc: &mut wgpu::ComputePass<'_>| {
            half.record(enc);
        }),
        (1, |enc: &mut wgpu::ComputePass<'_>| {
            full.record(enc);
        }),
        batches,
    )?;
    let record = |kernel: &str| {
        Record::measured("ns", kernel, vec![n, n, n], t.a.median_s, "gemm_full_xxt", t.b.median_s)
            .gflops(2.0 * (n * n * n) as f64)
            .on(adapter.clone(), t.a.method)
    };
    out.push(record("gram_half"));
    out.push(record("gram_half/paired").paired(t.ratio));
    pb.inc(1);
    // One ASGO step beside one Muon step on the same single matrices, wall-clock (each step then reads
    // the parameter back, the same bytes on both sides). Nominal FLOPs: ASGO 4r²c + 80r³ (§5.7(f):
    // Gram, preconditioning, 10 Polar Express iterations); Muon's NS5 5·(4r²c + 2r³).
    for &(b, m, n) in cases.iter().filter(|c| c.0 == 1) {
        pb.set_message(format!("asgo {m}x{n}"));
        let (r, c) = (m.min(n) as f64, m.max(n) as f64);
        let (asgo_t, muon_t) = asgo_and_muon_steps(ctx, m, n, if quick { 2 } else { 5 }, &mut rng)?;
        out.push(
            Record::measured("ns", "asgo_step", vec![b, m, n], asgo_t, "muon_step", muon_t)
                .gflops(4.0 * r * r * c + 80.0 * r * r * r)
                .on(adapter.clone(), "wall-clock"),
        );
        pb.inc(1);
    }
    // The ASGO stacks (wall-clock, each side then reads one parameter back).
    for (b, m, n) in stacks {
        pb.set_message(format!("asgo stack {b}x{m}x{n}"));
        let (r, c) = (m.min(n) as f64, m.max(n) as f64);
        let (stack_t, apart_t) = asgo_stack_steps(ctx, (b, m, n), if quick { 1 } else { 3 }, &mut rng)?;
        out.push(
            Record::measured("ns", "asgo_stack_step", vec![b, m, n], stack_t, "asgo_steps_apart", apart_t)
                .gflops(b as f64 * (4.0 * r * r * c + 80.0 * r * r * r))
                .on(adapter.clone(), "wall-clock"),
        );
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Median wall-clock seconds of one ASGO step over b same-shape m×n parameters stacked in one
/// optimizer, and of one step of b optimizers holding one each, interleaved.
fn asgo_stack_steps(
    ctx: &Context,
    (b, m, n): (usize, usize, usize),
    reps: usize,
    rng: &mut TestRng,
) -> Result<(f64, f64)> {
    use crate::optim::{Asgo, AsgoConfig};
    let (p0, g) = (rng.uniforms(m * n, 1.0), rng.uniforms(m * n, 1.0));
    let mut stack = Asgo::gpu(ctx, AsgoConfig::default())?;
    let mut apart = Vec::new();
    // Every parameter first, then the gradients: the stack grows once.
    let ids = (0..b).map(|i| stack.add_param(&format!("w{i}"), &p0, &[m, n])).collect::<Result<Vec<_>>>()?;
    for id in ids {
        stack.write_grad(id, &g)?;
    }
    for _ in 0..b {
        let mut one = Asgo::gpu(ctx, AsgoConfig::default())?;
        let id = one.add_param("w", &p0, &[m, n])?;
        one.write_grad(id, &g)?;
        apart.push(one);
    }
    let mut times = (Vec::new(), Vec::new());
    // One warm-up step each, then `reps` timed pairs.
    for k in 0..=reps {
        let start = std::time::Instant::now();
        stack.step()?;
        stack.read_param(ParamId(b - 1))?;
        let stack_t = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        for one in &mut apart {
            one.step()?;
        }
        apart[b - 1].read_param(ParamId(0))?;
        if k > 0 {
            times.0.push(stack_t);
            times.1.push(start.elapsed().as_secs_f64());
        }
    }
    Ok((median(&mut times.0), median(&mut times.1)))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median wall-clock seconds of one ASGO step and of one Muon step (each followed by reading the
/// parameter back) on an m×n matrix with a fixed random gradient, interleaved step by step.
fn asgo_and_muon_steps(ctx: &Context, m: usize, n: usize, reps: usize, rng: &mut TestRng) -> Result<(f64, f64)> {
    use crate::optim::{Asgo, AsgoConfig, MuonBuilder, MuonConfig};
    let (p0, g) = (rng.uniforms(m * n, 1.0), rng.uniforms(m * n, 1.0));
    let mut asgo = Asgo::gpu(ctx, AsgoConfig::default())?;
    let ia = asgo.add_param("w", &p0, &[m, n])?;
    let mut b = MuonBuilder::new(MuonConfig::default());
    let im = b.param("w", &p0, &[m, n])?;
    let mut muon = b.build(ctx)?;
    let mut times = (Vec::new(), Vec::new());
    // One warm-up step each (pipelines compiled), then `reps` timed pairs.
    for k in 0..=reps {
        for (opt, id, t) in [(&mut asgo as &mut dyn Stepper, ia, &mut times.0), (&mut muon, im, &mut times.1)] {
            opt.write_grad(id, &g)?;
            let start = std::time::Instant::now();
            opt.step()?;
            opt.read_param(id)?;
            if k > 0 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
    }
    Ok((median(&mut times.0), median(&mut times.1)))
}

/// The hutchinson suite: Rademacher generation beside the copy kernel writing the same bytes (goal
/// ≥ 0.8), and the fused AdaHessian / Sophia steps beside a fused AdamW step on the same tensor
/// (goal: ≤ 1.2× its time, ratio ≥ 0.83).
pub fn hutchinson(ctx: &Context, quick: bool, show_progress: bool) -> Result<Vec<Record>> {
    use crate::kernels::random::{RandomParams, RADEMACHER_FILL};
    let adapter = ctx.info().name.clone();
    // On GPUs 2^26 elements (256 MiB per tensor), far past any L2 cache (50-60 MB on an H100/H200),
    // so that the copy baseline measures memory bandwidth and not the cache.
    let on_gpu = !ctx.info().is_cpu();
    let n: usize = match (quick, on_gpu) {
        (true, _) => 1 << 20,
        (false, false) => 1 << 24,
        (false, true) => 1 << 26,
    };
    let (reps, batches) = if quick { (3, 3) } else { (5, 7) };
    let pb = progress(4, show_progress);
    pb.set_message("rademacher");
    let out = crate::Tensor::zeros(ctx, &[n])?;
    let u = ctx.uniform_buffer("bench random", 32);
    let rp = RandomParams { seed_lo: 1, len: n as u32, samples: 1, ..RandomParams::default() };
    ctx.queue().write_buffer(&u, 0, bytemuck::bytes_of(&rp));
    let fill = ctx.bind(&RADEMACHER_FILL, &[&u, out.buffer()])?;
    let t = ctx.time(reps, batches, |enc| {
        fill.record(ctx, enc, (n as u32).div_ceil(WORKGROUP_SIZE));
    })?;
    // The fill writes 4 bytes per element; a copy of n/2 floats moves the same 4n bytes.
    let copy = CopyKernel::new(ctx, n / 2)?;
    let c = ctx.time(reps, batches, |enc| copy.record(ctx, enc))?;
    let mut recs = vec![Record::measured("hutchinson", "rademacher_fill", vec![n], t.median_s, "copy", c.median_s)
        .gbps(4.0 * n as f64)
        .on(adapter.clone(), t.method)];
    pb.inc(1);
    let adamw = optimizer_with_grads(ctx, &Algorithm::from_name("adamw", &serde_json::json!({}))?, &[vec![n]])?;
    let base = time_update(ctx, &adamw, reps, batches)?;
    drop(adamw);
    for name in ["adahessian", "sophia"] {
        pb.set_message(name);
        let alg = Algorithm::from_name(name, &serde_json::json!({}))?;
        let opt = optimizer_with_grads(ctx, &alg, &[vec![n]])?;
        let t = time_update(ctx, &opt, reps, batches)?;
        recs.push(
            Record::measured("hutchinson", format!("{name}_step"), vec![n], t.median_s, "adamw_step", base.median_s)
                .gbps((alg.bytes_per_param() * n) as f64)
                .on(adapter.clone(), t.method),
        );
        pb.inc(1);
    }
    // The estimate's throughput on a softmax regression the size of the UCI digits problem
    // (1,797 × 65 features, 10 classes, synthetic data): samples per second beside one gradient.
    pb.set_message("softmax hutchinson");
    let (ns, d, k) = (1797, 65, 10);
    let mut rng = TestRng::new(9);
    let x = rng.uniforms(ns * d, 1.0);
    let labels: Vec<u32> = (0..ns).map(|i| (i % k) as u32).collect();
    let mut model = crate::hvp::softmax::SoftmaxRegression::new(ctx, &x, &labels, ns, d, k, 1e-4)?;
    model.set_weights(&rng.uniforms(d * k, 0.1))?;
    let samples = if quick { 4 } else { 32 };
    let grad = median_wall(reps, || model.loss_and_grad().map(|_| ()))?;
    let est = median_wall(reps, || crate::hvp::hutchinson_estimate(ctx, &mut model, samples, 1, 0).map(|_| ()))?;
    recs.push(
        Record::measured(
            "hutchinson",
            "softmax_hutchinson",
            vec![samples, d * k],
            est,
            "softmax_gradient",
            grad * samples as f64,
        )
        .rate(samples as f64)
        .on(adapter.clone(), "wall-clock"),
    );
    pb.inc(1);
    pb.finish_and_clear();
    Ok(recs)
}

fn median_wall(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = std::time::Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    Ok(median(&mut t))
}

fn rel_error(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The roots suite: A^{1/2} by coupled Newton–Schulz (5 and 10 iterations), MTP-10 and MPA-[5/5], and
/// (A + 1e-6·I)^{−1/4} by the coupled Newton iteration and A^{−1/2} by ASGO's Polar Express (10
/// iterations), for SPD matrices with condition number 100 at
/// n = 64 … 1024, each beside the CPU's f64 eigendecomposition (nalgebra) of the same matrix, with its
/// relative error against that oracle; and a batch of 64 matrices of 64×64 beside the same 64 solved
/// one call at a time (goal ≥ 5×). Wall-clock, end to end (upload, the algorithm with its readbacks,
/// download).
pub fn roots(ctx: &Context, quick: bool, show_progress: bool) -> Result<Vec<Record>> {
    use crate::kernels::roots::GpuMats;
    use crate::reference::roots::{eigen, spd_matrix, spectral};
    use crate::roots::{inv_root, inv_sqrt_polar_express, sqrt, InvRootOptions, MatOps, SqrtMethod};
    let adapter = ctx.info().name.clone();
    let sizes: &[usize] = if quick { &[32, 64] } else { &[64, 128, 256, 512, 1024] };
    let reps = if quick { 1 } else { 3 };
    let methods = [
        ("sqrt_newton_schulz5", SqrtMethod::NewtonSchulz { iters: 5, tol: None }),
        ("sqrt_newton_schulz10", SqrtMethod::NewtonSchulz { iters: 10, tol: None }),
        ("sqrt_mtp10", SqrtMethod::Mtp { degree: 10 }),
        ("sqrt_mpa5", SqrtMethod::Mpa { degree: 5 }),
    ];
    let pb = progress((sizes.len() * (methods.len() + 3) + 3) as u64, show_progress);
    let mut out = Vec::new();
    for &n in sizes {
        pb.set_message(format!("eigendecomposition {n}"));
        let a = spd_matrix(n, 100.0, 1.0, n as u64);
        let mut want = Vec::new();
        let eig = median_wall(reps, || {
            let (values, vectors) = eigen(&a, n, 0.0);
            want = spectral(&values, &vectors, f64::sqrt);
            Ok(())
        })?;
        pb.inc(1);
        for (name, method) in methods {
            pb.set_message(format!("{name} {n}"));
            let mut got = Vec::new();
            let t = median_wall(reps, || {
                let mut ops = GpuMats::new(ctx)?;
                let am = ops.upload(&a, 1, n, n)?;
                let y = sqrt(&mut ops, am, method)?;
                got = ops.read(y)?;
                Ok(())
            })?;
            out.push(
                Record::measured("roots", name, vec![n, n], t, "f64_eigh_cpu", eig)
                    .error(rel_error(&got, &want))
                    .on(adapter.clone(), "wall-clock"),
            );
            pb.inc(1);
        }
        pb.set_message(format!("inv_root p=4 {n}"));
        let want4 = {
            let (values, vectors) = eigen(&a, n, 1e-6);
            spectral(&values, &vectors, |l| l.powf(-0.25))
        };
        let mut got = Vec::new();
        let t = median_wall(reps, || {
            let mut ops = GpuMats::new(ctx)?;
            let am = ops.upload(&a, 1, n, n)?;
            let r = inv_root(&mut ops, am, 4, InvRootOptions::default())?;
            got = ops.read(r.x)?;
            Ok(())
        })?;
        out.push(
            Record::measured("roots", "inv_root_p4", vec![n, n], t, "f64_eigh_cpu", eig)
                .error(rel_error(&got, &want4))
                .on(adapter.clone(), "wall-clock"),
        );
        pb.inc(1);
        pb.set_message(format!("polar express {n}"));
        let want_inv = {
            let (values, vectors) = eigen(&a, n, 0.0);
            spectral(&values, &vectors, |l| l.powf(-0.5))
        };
        let t = median_wall(reps, || {
            let mut ops = GpuMats::new(ctx)?;
            let am = ops.upload(&a, 1, n, n)?;
            let p = inv_sqrt_polar_express(&mut ops, am, 0.0, 10)?;
            got = ops.read(p)?;
            Ok(())
        })?;
        out.push(
            Record::measured("roots", "inv_sqrt_polar_express10", vec![n, n], t, "f64_eigh_cpu", eig)
                .error(rel_error(&got, &want_inv))
                .on(adapter.clone(), "wall-clock"),
        );
        pb.inc(1);
    }
    // 64 matrices of 64×64: one batched call beside 64 single calls.
    let (b, n) = (64, 64);
    let mats: Vec<f32> = (0..b).flat_map(|z| spd_matrix(n, 100.0, 1.0, 1000 + z as u64)).collect();
    for (name, method) in [("batched_sqrt_newton_schulz5", methods[0].1), ("batched_sqrt_mpa5", methods[3].1)] {
        pb.set_message(name);
        let run = |data: &[f32], batch: usize| -> Result<()> {
            let mut ops = GpuMats::new(ctx)?;
            let am = ops.upload(data, batch, n, n)?;
            let y = sqrt(&mut ops, am, method)?;
            ops.read(y).map(|_| ())
        };
        let together = median_wall(reps, || run(&mats, b))?;
        let apart = median_wall(reps, || {
            for z in 0..b {
                run(&mats[z * n * n..(z + 1) * n * n], 1)?;
            }
            Ok(())
        })?;
        out.push(
            Record::measured("roots", name, vec![b, n, n], together, "one_by_one", apart)
                .on(adapter.clone(), "wall-clock"),
        );
        pb.inc(1);
    }
    // Shampoo's inverse roots in use: a step that refreshes every root (precondition_frequency 1;
    // same-size statistics rooted in one batched iteration) beside one that only preconditions.
    pb.set_message("shampoo step");
    let (shapes, count) = if quick { (vec![96, 80], 2) } else { (vec![384, 256], 4) };
    let step = |frequency: usize| -> Result<f64> {
        use crate::optim::shampoo::{Shampoo, ShampooConfig};
        let cfg =
            ShampooConfig { precondition_frequency: frequency, start_preconditioning_step: 0, ..Default::default() };
        let mut opt = Shampoo::new(GpuMats::new(ctx)?, cfg)?;
        let grads: Vec<Vec<f32>> =
            (0..count).map(|i| crate::parity::TestRng::new(i as u64).normals(shapes[0] * shapes[1], 1.0)).collect();
        let ids = grads.iter().map(|g| opt.add_param(g, &shapes)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        // The first step refreshes in both (step 1); the timed ones refresh only at frequency 1.
        opt.step(&refs)?;
        median_wall(reps.max(3), || {
            opt.step(&refs)?;
            opt.read(ids[0]).map(|_| ())
        })
    };
    let (refresh, plain) = (step(1)?, step(usize::MAX)?);
    out.push(
        Record::measured(
            "roots",
            "shampoo_step_refresh",
            vec![count, shapes[0], shapes[1]],
            refresh,
            "shampoo_step",
            plain,
        )
        .on(adapter.clone(), "wall-clock"),
    );
    pb.inc(1);
    pb.finish_and_clear();
    Ok(out)
}

/// Prints records as a table.
pub fn print_table(ctx: &Context, records: &[Record]) {
    println!("adapter: {} ({:?}, {:?})", ctx.info().name, ctx.info().backend, ctx.info().device_type);
    println!(
        "{:<12} {:<27} {:>12} {:>11} {:>12} {:<16} {:>11} {:>7}  timing",
        "suite", "kernel", "elements", "median", "rate", "baseline", "base median", "ratio"
    );
    for r in records {
        let thr = match (r.gbps, r.gflops, r.rel_error, r.per_second) {
            (Some(g), ..) => format!("{g:.2} GB/s"),
            (_, Some(f), ..) => format!("{f:.1} GF"),
            (_, _, Some(e), _) => format!("err {e:.1e}"),
            (.., Some(s)) => format!("{s:.1}/s"),
            _ => "-".into(),
        };
        println!(
            "{:<12} {:<27} {:>12} {:>9.3}ms {:>12} {:<16} {:>9.3}ms {:>7.3}  {}",
            r.suite,
            r.kernel,
            r.shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("x"),
            r.median_s * 1e3,
            thr,
            r.baseline,
            r.baseline_median_s * 1e3,
            r.ratio,
            r.timing
        );
    }
}
