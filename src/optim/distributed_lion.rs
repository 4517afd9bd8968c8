//! Distributed Lion (ALGORITHMS.md §4.6) with its N workers on one GPU: each worker compresses its
//! Lion direction to signs (two bits per parameter), the server aggregates them by majority vote
//! (`"mavo"`) or by averaging (`"avg"`), and every worker applies the same update. The packed δ_i
//! and Δ are what a multi-machine run would send; [`DistributedLion::read_signs`] and
//! [`DistributedLion::read_aggregate`] return them in the documented layout (`shaders/distributed_lion.wgsl`),
//! and `reference::distributed_lion` holds the same steps on the CPU.
//!
//! ```
//! use gpuopt::optim::distributed_lion::{Aggregation, DistributedLion, DistributedLionConfig};
//! # fn main() -> gpuopt::Result<()> {
//! let ctx = gpuopt::Context::new()?;
//! let config = DistributedLionConfig { lr: 1e-3, variant: Aggregation::Mavo, ..Default::default() };
//! let mut opt = DistributedLion::new(&ctx, config, &[0.0; 1000], 4)?;
//! for worker in 0..4 {
//!     opt.write_grad(worker, &vec![0.01 * worker as f32 - 0.005; 1000])?; // -0.005, 0.005, 0.015, 0.025
//! }
//! opt.step()?;                  // compress, then vote and apply: two dispatches for all workers
//! let x = opt.read_param()?;    // 3 of 4 workers voted +1, so the vote is +1: x = -lr everywhere
//! assert!(x.iter().all(|&v| v == -1e-3));
//! assert_eq!(opt.read_signs(0)?[..2], [u32::MAX, u32::MAX]); // worker 0: all 32 non-zero, negative
//! # Ok(()) }
//! ```

use super::algorithm::{Algorithm, Lion};
use super::{check_config_snapshot, config_snapshot, ParamMeta, Snapshot};
use crate::error::{Error, Result};
use crate::gpu::{BoundKernel, Context, WORKGROUP_SIZE};
use crate::kernels::distributed_lion::{self as kd, DlionParams};
use serde::{Deserialize, Serialize};

/// How the server combines the workers' signs (`variant` in ALGORITHMS.md §11.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Majority vote: Δ = sign(Σ δ_i) (a tie gives 0).
    #[default]
    Mavo,
    /// Averaging: Δ = (1/N)·Σ δ_i (at most [`MAX_AVG_WORKERS`] workers: the counts travel as bytes).
    Avg,
}

const NAME: &str = "distributed_lion";

/// An error naming the first NaN/Inf of `data` (checked before anything is written).
fn check_finite(data: &[f32], what: &str) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Invalid(format!("{what}: element {i} is {}; nothing was written", data[i]))),
        None => Ok(()),
    }
}

/// Workers the averaging variant takes (its counts are signed bytes).
pub const MAX_AVG_WORKERS: usize = 127;
/// Workers the majority vote takes (8,190 on llvmpipe, whose loop budget the vote's loop over
/// workers must fit: [`crate::gpu::AdapterSummary::loop_limit`]).
pub const MAX_VOTE_WORKERS: usize = 65_535;

/// Distributed Lion's hyperparameters; defaults as Lion (§4.6(b)), decay DW-B as in Lion (the
/// placement of the decay in the paper's Algorithm 1 is unconfirmed, ALGORITHMS.md §4.6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DistributedLionConfig {
    /// Learning rate.
    pub lr: f64,
    /// Interpolation β1 of the direction each worker signs.
    pub beta1: f64,
    /// Momentum EMA β2 of each worker's m.
    pub beta2: f64,
    /// DW-B decay.
    pub weight_decay: f64,
    /// `"mavo"` | `"avg"`.
    pub variant: Aggregation,
}

impl Default for DistributedLionConfig {
    fn default() -> Self {
        let l = Lion::default();
        DistributedLionConfig {
            lr: l.lr,
            beta1: l.beta1,
            beta2: l.beta2,
            weight_decay: l.weight_decay,
            variant: Aggregation::Mavo,
        }
    }
}

impl DistributedLionConfig {
    /// Rejects what Lion rejects (non-finite or negative lr / decay, β outside [0, 1)).
    pub fn validate(&self) -> Result<()> {
        let lion = Lion {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            ..Lion::default()
        };
        Algorithm::Lion(lion).validate()
    }

    /// The kernels' uniform for `words` 32-element words and `workers` workers.
    pub fn params(&self, words: usize, workers: usize) -> DlionParams {
        DlionParams {
            words: words as u32,
            workers: workers as u32,
            lr: self.lr as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            beta1: self.beta1 as f32,
            omb1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            omb2: (1.0 - self.beta2) as f32,
            ..DlionParams::default()
        }
    }
}

/// N workers' Distributed Lion over one flat parameter vector, on the GPU.
pub struct DistributedLion {
    ctx: Context,
    config: DistributedLionConfig,
    n: usize,
    workers: usize,
    words: usize,
    t: u64,
    uniform: wgpu::Buffer,
    grads: wgpu::Buffer,
    momenta: wgpu::Buffer,
    signs: wgpu::Buffer,
    aggregate: wgpu::Buffer,
    x: wgpu::Buffer,
    compress_k: BoundKernel,
    aggregate_k: BoundKernel,
}

impl std::fmt::Debug for DistributedLion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedLion")
            .field("config", &self.config)
            .field("params", &self.n)
            .field("workers", &self.workers)
            .field("step", &self.t)
            .finish()
    }
}

impl DistributedLion {
    /// `workers` workers sharing the parameters `init`; every momentum starts at 0.
    pub fn new(ctx: &Context, config: DistributedLionConfig, init: &[f32], workers: usize) -> Result<Self> {
        config.validate()?;
        let max = match config.variant {
            Aggregation::Mavo => MAX_VOTE_WORKERS,
            Aggregation::Avg => MAX_AVG_WORKERS,
        };
        if workers == 0 || workers > max {
            return Err(Error::Invalid(format!("{workers} workers: {:?} takes 1 to {max}", config.variant)));
        }
        // The aggregation sums every worker's sign in one loop, for 8 elements per invocation: an
        // adapter that stops long loops (llvmpipe: 8,190 workers) would cut the vote short.
        ctx.info().check_loop(8 * (workers as u64 + 1), &format!("aggregating {workers} workers' signs"))?;
        if init.is_empty() {
            return Err(Error::Invalid("Distributed Lion needs at least one parameter".into()));
        }
        check_finite(init, "initial parameters")?;
        let n = init.len();
        let words = n.div_ceil(32);
        let per_worker = 128 * words as u64; // bytes of one worker's padded vector
        let all = per_worker * workers as u64;
        if all > ctx.max_binding_bytes() {
            return Err(Error::TooLarge {
                what: format!("{workers} workers' gradients of {n} parameters"),
                bytes: all,
                limit_name: "max_storage_buffer_binding_size",
                limit: ctx.max_binding_bytes(),
            });
        }
        let uniform = ctx.uniform_buffer("distributed lion params", std::mem::size_of::<DlionParams>() as u64);
        let grads = ctx.storage_buffer("worker gradients", all)?;
        let momenta = ctx.storage_buffer("worker momenta", all)?;
        let signs = ctx.storage_buffer("worker signs", 8 * (words * workers) as u64)?;
        let agg_bytes = match config.variant {
            Aggregation::Mavo => 8 * words as u64,
            Aggregation::Avg => 32 * words as u64,
        };
        let aggregate = ctx.storage_buffer("aggregated update", agg_bytes)?;
        let x = ctx.storage_buffer("parameters", per_worker)?;
        ctx.queue().write_buffer(&x, 0, bytemuck::cast_slice(init));
        let agg_spec = match config.variant {
            Aggregation::Mavo => kd::VOTE_APPLY,
            Aggregation::Avg => kd::AVERAGE_APPLY,
        };
        let compress_k = ctx.bind(&kd::COMPRESS, &[&uniform, &grads, &momenta, &signs])?;
        let aggregate_k = ctx.bind(&agg_spec, &[&uniform, &signs, &aggregate, &x])?;
        Ok(DistributedLion {
            ctx: ctx.clone(),
            config,
            n,
            workers,
            words,
            t: 0,
            uniform,
            grads,
            momenta,
            signs,
            aggregate,
            x,
            compress_k,
            aggregate_k,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DistributedLionConfig {
        &self.config
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    fn worker_offset(&self, worker: usize) -> Result<u64> {
        if worker >= self.workers {
            return Err(Error::Invalid(format!("no worker {worker} (there are {})", self.workers)));
        }
        Ok(128 * (self.words * worker) as u64)
    }

    fn check_vector(&self, data: &[f32], what: &str) -> Result<()> {
        if data.len() != self.n {
            return Err(Error::Shape { what: what.into(), expected: vec![self.n], got: vec![data.len()] });
        }
        check_finite(data, what)
    }

    /// Writes worker `worker`'s gradient for the next step. A non-finite value is an error and
    /// writes nothing (the previous gradient, the momenta and the parameters are kept).
    pub fn write_grad(&mut self, worker: usize, grad: &[f32]) -> Result<()> {
        let off = self.worker_offset(worker)?;
        self.check_vector(grad, &format!("gradient of worker {worker}"))?;
        self.ctx.queue().write_buffer(&self.grads, off, bytemuck::cast_slice(grad));
        Ok(())
    }

    /// Overwrites the shared parameters.
    pub fn write_param(&mut self, data: &[f32]) -> Result<()> {
        self.check_vector(data, "parameters")?;
        self.ctx.queue().write_buffer(&self.x, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Overwrites worker `worker`'s momentum (to resume from saved state).
    pub fn write_momentum(&mut self, worker: usize, data: &[f32]) -> Result<()> {
        let off = self.worker_offset(worker)?;
        self.check_vector(data, &format!("momentum of worker {worker}"))?;
        self.ctx.queue().write_buffer(&self.momenta, off, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Changes the learning rate (validated; a bad value changes nothing).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let next = DistributedLionConfig { lr, ..self.config.clone() };
        next.validate()?;
        self.config = next;
        Ok(())
    }

    /// One step: every worker compresses, the server aggregates and the parameters move (two
    /// dispatches whatever N is).
    pub fn step(&mut self) -> Result<()> {
        self.write_uniform();
        let mut enc = self.ctx.encoder("distributed lion step");
        let mut pass = crate::gpu::compute_pass(&mut enc, "distributed lion step");
        self.ctx.scoped("distributed lion step", || self.record_step(&mut pass))?;
        drop(pass);
        self.ctx.submit(enc);
        self.t += 1;
        Ok(())
    }

    /// Writes the kernels' uniform from the configuration (benchmarks call it once, then
    /// [`DistributedLion::record_step`] in a loop).
    #[doc(hidden)]
    pub fn write_uniform(&self) {
        let h = self.config.params(self.words, self.workers);
        self.ctx.queue().write_buffer(&self.uniform, 0, bytemuck::bytes_of(&h));
    }

    /// Records one step's two dispatches (an invocation per 32 parameters of each worker, then one
    /// per 32 parameters); returns the dispatch count.
    #[doc(hidden)]
    pub fn record_step(&self, pass: &mut wgpu::ComputePass<'_>) -> usize {
        let wg = |threads: usize| threads.div_ceil(WORKGROUP_SIZE as usize) as u32;
        self.compress_k.record(&self.ctx, pass, wg(self.words * self.workers))
            + self.aggregate_k.record(&self.ctx, pass, wg(self.words))
    }

    /// Bytes a step moves per parameter (ALGORITHMS.md §4.6(f)): each worker reads g and m and
    /// writes m and its 2 bits of δ; the server reads N·2 bits, writes Δ (2 bits, or a byte for
    /// Avg), and reads and writes x.
    pub fn bytes_per_param(&self) -> f64 {
        let delta = match self.config.variant {
            Aggregation::Mavo => 0.25,
            Aggregation::Avg => 1.0,
        };
        let n = self.workers as f64;
        n * (12.0 + 0.25) + n * 0.25 + delta + 8.0
    }

    /// The shared parameters.
    pub fn read_param(&self) -> Result<Vec<f32>> {
        self.ctx.read_f32(&self.x, 0, self.n)
    }

    /// Worker `worker`'s momentum.
    pub fn read_momentum(&self, worker: usize) -> Result<Vec<f32>> {
        let off = self.worker_offset(worker)?;
        self.ctx.read_f32(&self.momenta, off, self.n)
    }

    fn read_u32(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<u32>> {
        let bytes = self.ctx.read_bytes(buffer, offset, 4 * len as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Worker `worker`'s δ of the last step: two u32 per 32 parameters (non-zero plane, negative
    /// plane; bit j of pair w ↔ parameter 32w + j), the 2 bits per parameter it would send.
    pub fn read_signs(&self, worker: usize) -> Result<Vec<u32>> {
        self.worker_offset(worker)?;
        self.read_u32(&self.signs, 8 * (self.words * worker) as u64, 2 * self.words)
    }

    fn meta(&self) -> ParamMeta {
        ParamMeta { name: "x".into(), shape: vec![self.n], group: 0 }
    }

    fn state_names(&self) -> Vec<String> {
        (0..self.workers).map(|w| format!("m{w}")).collect()
    }

    /// Everything needed to resume: the configuration, the step count, x and every worker's m.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let values = vec![self.read_param()?];
        let states: Vec<(String, Vec<f32>)> = (self.state_names().into_iter().enumerate())
            .map(|(w, name)| Ok((name, self.read_momentum(w)?)))
            .collect::<Result<_>>()?;
        let lr_wd = (self.config.lr, self.config.weight_decay);
        Ok(config_snapshot(NAME, &self.config, lr_wd, self.t, &[self.meta()], values, vec![states]))
    }

    /// Restores a snapshot of an optimizer with the same parameter count, workers and variant; anything
    /// else (or a non-finite value) is an error that changes nothing.
    pub fn restore(&mut self, s: Snapshot) -> Result<()> {
        let names = self.state_names();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let n = self.n;
        let (config, states): (DistributedLionConfig, _) =
            check_config_snapshot(&s, NAME, &[self.meta()], &refs, |_, _| n, DistributedLionConfig::validate)?;
        let bad = |reason: String| Error::Checkpoint { path: "<snapshot>".into(), reason };
        if config.variant != self.config.variant {
            return Err(bad(format!("variant {:?}, this optimizer runs {:?}", config.variant, self.config.variant)));
        }
        if s.states[0].len() != self.workers {
            return Err(bad(format!("{} workers' momenta, this optimizer has {}", s.states[0].len(), self.workers)));
        }
        self.check_vector(&s.values[0], "checkpointed parameters")?;
        for (w, m) in states[0].iter().enumerate() {
            self.check_vector(m, &format!("checkpointed momentum of worker {w}"))?;
        }
        self.write_param(&s.values[0])?;
        for (w, m) in states[0].iter().enumerate() {
            self.write_momentum(w, m)?;
        }
        self.config = config;
        self.t = s.step;
        Ok(())
    }

    /// Saves a checkpoint (safetensors, written to a temporary file and renamed into place).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        self.snapshot()?.save(path)
    }

    /// Loads a checkpoint written by [`DistributedLion::save`]; a corrupt or mismatched file is an
    /// error and leaves the optimizer as it was.
    pub fn load(&mut self, path: &std::path::Path) -> Result<()> {
        let s = Snapshot::load(path)?;
        self.restore(s)
    }

    /// The server's Δ of the last step: MaVo, packed like δ; Avg, Σ δ_i as one signed byte per
    /// parameter (byte k of u32 q ↔ parameter 4q + k).
    pub fn read_aggregate(&self) -> Result<Vec<u32>> {
        let len = match self.config.variant {
            Aggregation::Mavo => 2 * self.words,
            Aggregation::Avg => 8 * self.words,
        };
        self.read_u32(&self.aggregate, 0, len)
    }
}
