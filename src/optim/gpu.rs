//! The GPU optimizer: flat arenas for parameters, gradients and state; one fused dispatch per step.

use super::{Core, GroupId, OptimizerBuilder, ParamId, ParamMeta, Snapshot, Stepper};
use crate::error::Result;
use crate::gpu::{BoundKernel, Context, TensorView, WORKGROUP_SIZE};
use crate::kernels::adaptive::{MARS_NORM, MARS_PARTIAL};
use crate::kernels::arena::{ArenaLayout, Hypers};
use crate::kernels::FIND_NON_FINITE;

/// The per-tensor norm passes of MARS.
struct NormPasses {
    partial: BoundKernel,
    norm: BoundKernel,
    tensors: u32,
}

/// A guard result that has been submitted but not yet read.
struct Pending {
    staging: wgpu::Buffer,
    index: wgpu::SubmissionIndex,
}

/// The GPU optimizer. Parameters, gradients and every state tensor live in flat arenas (one buffer
/// each) with an offset table; a step is one command buffer with one update dispatch for all tensors
/// (plus one for the non-finite guard and two for MARS's per-tensor norms), whatever their number.
pub struct Optimizer {
    ctx: Context,
    core: Core,
    layout: ArenaLayout,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    states: Vec<wgpu::Buffer>,
    hyper: wgpu::Buffer,
    skip: wgpu::Buffer,
    update: Option<BoundKernel>,
    check: Option<BoundKernel>,
    norms: Option<NormPasses>,
    pending: Option<Pending>,
    dispatches: usize,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("algorithm", &self.core.algorithm)
            .field("params", &self.core.params.len())
            .field("arena_elems", &self.layout.total)
            .finish()
    }
}

impl Optimizer {
    pub(crate) fn new(ctx: &Context, b: OptimizerBuilder) -> Result<Self> {
        let core = Core::new(&b);
        let lens: Vec<usize> = b.params.iter().map(ParamMeta::len).collect();
        let groups: Vec<usize> = b.params.iter().map(|p| p.group).collect();
        let layout = ArenaLayout::plan(&lens, &groups);
        let bytes = 4 * layout.total as u64;
        let params = ctx.storage_buffer("parameter arena", bytes)?;
        let grads = ctx.storage_buffer("gradient arena", bytes)?;
        let mut states = Vec::new();
        for (name, _) in core.algorithm.states() {
            states.push(ctx.storage_buffer(&format!("state arena {name}"), bytes)?);
        }
        // New buffers are zeroed by wgpu; upload the initial parameters.
        for (i, data) in b.init.iter().enumerate() {
            if !data.is_empty() {
                ctx.queue().write_buffer(
                    &params,
                    4 * layout.offsets[i] as u64,
                    bytemuck::cast_slice(data),
                );
            }
        }
        let hyper = ctx.uniform_buffer("hyperparameters", std::mem::size_of::<Hypers>() as u64);
        let skip = ctx.storage_buffer("skip flag", 16)?;
        let block_buf = ctx.storage_buffer("block table", 16 * layout.blocks.len() as u64)?;
        ctx.queue()
            .write_buffer(&block_buf, 0, bytemuck::cast_slice(&layout.blocks));

        let mut opt = Optimizer {
            ctx: ctx.clone(),
            core,
            layout,
            params,
            grads,
            states,
            hyper,
            skip,
            update: None,
            check: None,
            norms: None,
            pending: None,
            dispatches: 0,
        };
        if opt.layout.blocks.is_empty() {
            return Ok(opt);
        }
        let spec = opt.core.algorithm.kernel();
        let mut norm_buf = None;
        if opt.core.algorithm.needs_norm() {
            let n_tensors = opt.layout.tensor_blocks.len();
            let norms = ctx.storage_buffer("per-tensor norms", 4 * n_tensors as u64)?;
            let partials =
                ctx.storage_buffer("norm partials", 8 * opt.layout.blocks.len() as u64)?;
            let table = ctx.storage_buffer("tensor table", 8 * n_tensors as u64)?;
            ctx.queue()
                .write_buffer(&table, 0, bytemuck::cast_slice(&opt.layout.tensor_blocks));
            let g_prev = &opt.states[opt.core.state_index("g_prev")?];
            let partial = ctx.bind(
                &MARS_PARTIAL,
                &[&opt.hyper, &block_buf, &opt.grads, g_prev, &partials],
            )?;
            let norm = ctx.bind(&MARS_NORM, &[&norms, &partials, &table])?;
            opt.norms = Some(NormPasses {
                partial,
                norm,
                tensors: n_tensors as u32,
            });
            norm_buf = Some(norms);
        }
        let mut buffers: Vec<&wgpu::Buffer> =
            vec![&opt.hyper, &block_buf, &opt.skip, &opt.params, &opt.grads];
        buffers.extend(opt.states.iter());
        if let Some(n) = &norm_buf {
            buffers.push(n);
        }
        opt.update = Some(ctx.bind(&spec, &buffers)?);
        if opt.core.guard {
            opt.check = Some(ctx.bind(&FIND_NON_FINITE, &[&opt.grads, &opt.skip])?);
        }
        Ok(opt)
    }

    /// The context the optimizer runs on.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The algorithm and its hyperparameters.
    pub fn algorithm(&self) -> &super::Algorithm {
        &self.core.algorithm
    }

    /// The arena layout (offsets in elements, blocks).
    pub fn layout(&self) -> &ArenaLayout {
        &self.layout
    }

    /// Dispatches recorded by the last step (constant in the number of tensors; tests assert it).
    pub fn dispatches_last_step(&self) -> usize {
        self.dispatches
    }

    /// A parameter inside the parameter arena, for the user's own kernels.
    pub fn param_view(&self, id: ParamId) -> Result<TensorView<'_>> {
        self.view(&self.params, id)
    }

    /// A gradient inside the gradient arena: write it from the user's own kernels before `step`.
    pub fn grad_view(&self, id: ParamId) -> Result<TensorView<'_>> {
        self.view(&self.grads, id)
    }

    fn view<'a>(&'a self, buffer: &'a wgpu::Buffer, id: ParamId) -> Result<TensorView<'a>> {
        let p = self.core.param(id)?;
        Ok(TensorView {
            buffer,
            offset: 4 * self.layout.offsets[id.0] as u64,
            shape: &p.shape,
        })
    }

    fn resolve_pending(&mut self) -> Result<()> {
        if let Some(p) = self.pending.take() {
            let bytes = self.ctx.map_staging(&p.staging, Some(p.index))?;
            let flag = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            self.core.last_non_finite = flag != 0;
            if flag != 0 {
                // The GPU skipped the update; the host had counted it.
                self.core.t -= 1;
                self.core.skipped += 1;
                log::warn!("gpuopt: non-finite gradient, step skipped (parameters and state kept)");
            }
        }
        Ok(())
    }

    /// Records the fused update dispatches of one step into `encoder` with the hyperparameters
    /// already in the uniform; returns the number of dispatches. (Benchmarks call it in a loop.)
    #[doc(hidden)]
    pub fn record_update(&self, encoder: &mut wgpu::CommandEncoder) -> usize {
        let mut n = 0;
        if let Some(check) = &self.check {
            encoder.clear_buffer(&self.skip, 0, None);
            n += check.record(
                &self.ctx,
                encoder,
                (self.layout.total as u32 / 4).div_ceil(WORKGROUP_SIZE),
            );
        }
        let blocks = self.layout.blocks.len() as u32;
        if let Some(norms) = &self.norms {
            n += norms.partial.record(&self.ctx, encoder, blocks);
            n += norms.norm.record(&self.ctx, encoder, norms.tensors);
        }
        if let Some(update) = &self.update {
            n += update.record(&self.ctx, encoder, blocks);
        }
        n
    }

    /// Writes the uniform for step `t` (benchmarks use it to time the kernel alone).
    #[doc(hidden)]
    pub fn write_hyper(&self, t: u64) {
        let h = self.core.hypers(t);
        self.ctx
            .queue()
            .write_buffer(&self.hyper, 0, bytemuck::bytes_of(&h));
    }

    fn read_arena(&self, buffer: &wgpu::Buffer, id: ParamId) -> Result<Vec<f32>> {
        let p = self.core.param(id)?;
        self.ctx
            .read_f32(buffer, 4 * self.layout.offsets[id.0] as u64, p.len())
    }

    fn write_arena(
        &self,
        buffer: &wgpu::Buffer,
        id: ParamId,
        data: &[f32],
        what: &str,
    ) -> Result<()> {
        self.core.check_len(id, data.len(), what)?;
        if !data.is_empty() {
            self.ctx.queue().write_buffer(
                buffer,
                4 * self.layout.offsets[id.0] as u64,
                bytemuck::cast_slice(data),
            );
        }
        Ok(())
    }
}

impl Stepper for Optimizer {
    fn step(&mut self) -> Result<()> {
        self.resolve_pending()?;
        let t = self.core.t + 1;
        self.write_hyper(t);
        let mut encoder = self.ctx.encoder("gpuopt step");
        let ctx = self.ctx.clone();
        let (dispatches, staging) = ctx.scoped("optimizer step", || {
            let n = self.record_update(&mut encoder);
            let staging = self.check.as_ref().map(|_| {
                let s = self.ctx.staging(4);
                encoder.copy_buffer_to_buffer(&self.skip, 0, &s, 0, 4);
                s
            });
            (n, staging)
        })?;
        let index = self.ctx.submit(encoder);
        self.dispatches = dispatches;
        self.core.t = t;
        if let Some(staging) = staging {
            self.pending = Some(Pending { staging, index });
        } else {
            self.core.last_non_finite = false;
        }
        Ok(())
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        self.write_arena(&self.grads, id, grad, "gradient")
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        self.write_arena(&self.params, id, data, "parameter")
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        self.read_arena(&self.params, id)
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        let k = self.core.state_index(state)?;
        self.read_arena(&self.states[k], id)
    }

    fn step_count(&mut self) -> Result<u64> {
        self.resolve_pending()?;
        Ok(self.core.t)
    }

    fn found_non_finite(&mut self) -> Result<bool> {
        self.resolve_pending()?;
        Ok(self.core.last_non_finite)
    }

    fn skipped_steps(&mut self) -> Result<u64> {
        self.resolve_pending()?;
        Ok(self.core.skipped)
    }

    fn set_lr(&mut self, group: GroupId, lr: f64) -> Result<()> {
        self.core.set_lr(group, lr)
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        self.core.set_weight_decay(group, wd)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        self.resolve_pending()?;
        let all_params = self.ctx.read_f32(&self.params, 0, self.layout.total)?;
        let all_states: Vec<Vec<f32>> = self
            .states
            .iter()
            .map(|s| self.ctx.read_f32(s, 0, self.layout.total))
            .collect::<Result<_>>()?;
        let cut = |arena: &[f32], i: usize| {
            arena[self.layout.offsets[i]..self.layout.offsets[i] + self.layout.lens[i]].to_vec()
        };
        let n = self.core.params.len();
        let values = (0..n).map(|i| cut(&all_params, i)).collect();
        let states = (0..n)
            .map(|i| all_states.iter().map(|s| cut(s, i)).collect())
            .collect();
        Ok(Snapshot::from_core(&self.core, values, states))
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        self.resolve_pending()?;
        let algorithm = s.check_fits(&self.core)?;
        for i in 0..self.core.params.len() {
            self.write_arena(&self.params, ParamId(i), &s.values[i], "parameter")?;
            for (k, buf) in self.states.iter().enumerate() {
                self.write_arena(buf, ParamId(i), &s.states[i][k], "state")?;
            }
        }
        s.apply_core(&mut self.core, algorithm);
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.core.params
    }
}
