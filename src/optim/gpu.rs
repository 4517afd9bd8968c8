//! The GPU optimizer: flat arenas for parameters, gradients and state; one fused dispatch per step.

use super::{Core, GroupId, OptimizerBuilder, ParamId, ParamMeta, Snapshot, Stepper};
use crate::error::{Error, Result};
use crate::gpu::{BoundKernel, Context, TensorView, WORKGROUP_SIZE};
use crate::kernels::arena::{plan_segments, ArenaLayout, Hypers, ALIGN_ELEMS};
use crate::kernels::FIND_NON_FINITE;

/// The per-tensor norm passes of MARS and Lion-K's norm maps.
struct NormPasses {
    partial: BoundKernel,
    norm: BoundKernel,
    tensors: u32,
}

/// One arena: buffers no larger than one storage binding, and the kernels bound to them. Most models
/// fit one segment; a model larger than `max_storage_buffer_binding_size` is split into a few, so
/// the dispatch count grows with bytes / binding limit, never with the number of tensors.
struct Segment {
    layout: ArenaLayout,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    states: Vec<wgpu::Buffer>,
    /// This step's Hessian-diagonal estimate (AdaHessian, Sophia), laid out like `grads`.
    hess: Option<wgpu::Buffer>,
    update: Option<BoundKernel>,
    check: Option<BoundKernel>,
    check_hess: Option<BoundKernel>,
    norms: Option<NormPasses>,
}

/// A guard result that has been submitted but not yet read.
struct Pending {
    staging: wgpu::Buffer,
    index: wgpu::SubmissionIndex,
}

/// The GPU optimizer. Parameters, gradients and every state tensor live in flat arenas (one buffer
/// each) with an offset table; a step is one command buffer with one update dispatch for all tensors
/// (plus one for the non-finite guard and two for per-tensor norms: MARS, Lion-K's ℓ2/ℓp), whatever their number.
pub struct Optimizer {
    ctx: Context,
    core: Core,
    segments: Vec<Segment>,
    /// Per parameter: (segment, index within the segment).
    location: Vec<(usize, usize)>,
    hyper: wgpu::Buffer,
    skip: wgpu::Buffer,
    pending: Option<Pending>,
    dispatches: usize,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("algorithm", &self.core.algorithm)
            .field("params", &self.core.params.len())
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl Segment {
    fn new(ctx: &Context, core: &Core, layout: ArenaLayout, hyper: &wgpu::Buffer, skip: &wgpu::Buffer) -> Result<Self> {
        let bytes = 4 * layout.total as u64;
        let params = ctx.storage_buffer("parameter arena", bytes)?;
        let grads = ctx.storage_buffer("gradient arena", bytes)?;
        let mut states = Vec::new();
        for (name, _) in core.algorithm.states() {
            states.push(ctx.storage_buffer(&format!("state arena {name}"), bytes)?);
        }
        let hess = if core.algorithm.needs_hessian() {
            Some(ctx.storage_buffer("hessian diagonal arena", bytes)?)
        } else {
            None
        };
        let mut seg =
            Segment { layout, params, grads, states, hess, update: None, check: None, check_hess: None, norms: None };
        if seg.layout.blocks.is_empty() {
            return Ok(seg);
        }
        let blocks = ctx.storage_buffer("block table", 16 * seg.layout.blocks.len() as u64)?;
        ctx.queue().write_buffer(&blocks, 0, bytemuck::cast_slice(&seg.layout.blocks));
        let mut norm_buf = None;
        if let Some((partial_spec, norm_spec, state)) = core.algorithm.norm_passes() {
            let n_tensors = seg.layout.tensor_blocks.len();
            // f32 per tensor for MARS, (max, root of the scaled sum) for Lion-K: 8 bytes serve both.
            let norms = ctx.storage_buffer("per-tensor norms", 8 * n_tensors as u64)?;
            let partials = ctx.storage_buffer("norm partials", 8 * seg.layout.blocks.len() as u64)?;
            let table = ctx.storage_buffer("tensor table", 8 * n_tensors as u64)?;
            ctx.queue().write_buffer(&table, 0, bytemuck::cast_slice(&seg.layout.tensor_blocks));
            let read = &seg.states[core.state_index(state)?];
            let partial = ctx.bind(&partial_spec, &[hyper, &blocks, &seg.grads, read, &partials])?;
            // Bound by binding number: Lion-K's pass also reads the hyperparameters and block table.
            let norm_buffers: Vec<&wgpu::Buffer> = (norm_spec.bindings.iter())
                .map(|&(b, _)| match b {
                    0 => hyper,
                    1 => &blocks,
                    8 => &norms,
                    9 => &partials,
                    _ => &table,
                })
                .collect();
            let norm = ctx.bind(&norm_spec, &norm_buffers)?;
            seg.norms = Some(NormPasses { partial, norm, tensors: n_tensors as u32 });
            norm_buf = Some(norms);
        }
        let mut buffers: Vec<&wgpu::Buffer> = vec![hyper, &blocks, skip, &seg.params, &seg.grads];
        buffers.extend(seg.states.iter());
        buffers.extend(seg.hess.as_ref());
        buffers.extend(norm_buf.as_ref());
        seg.update = Some(ctx.bind(&core.algorithm.kernel(), &buffers)?);
        if core.guard {
            seg.check = Some(ctx.bind(&FIND_NON_FINITE, &[&seg.grads, skip])?);
            if let Some(h) = &seg.hess {
                seg.check_hess = Some(ctx.bind(&FIND_NON_FINITE, &[h, skip])?);
            }
        }
        Ok(seg)
    }
}

impl Optimizer {
    pub(crate) fn new(ctx: &Context, b: OptimizerBuilder) -> Result<Self> {
        let core = Core::new(&b);
        let lens: Vec<usize> = b.params.iter().map(ParamMeta::len).collect();
        let groups: Vec<usize> = b.params.iter().map(|p| p.group).collect();
        let max_elems = (ctx.max_binding_bytes() / 4) as usize / ALIGN_ELEMS * ALIGN_ELEMS;
        let plan = plan_segments(&lens, &groups, max_elems).map_err(|i| Error::TooLarge {
            what: format!("parameter {} ({} elements)", b.params[i].name, lens[i]),
            bytes: 4 * lens[i] as u64,
            limit_name: "max_storage_buffer_binding_size",
            limit: ctx.max_binding_bytes(),
        })?;
        let hyper = ctx.uniform_buffer("hyperparameters", std::mem::size_of::<Hypers>() as u64);
        let skip = ctx.storage_buffer("skip flag", 16)?;
        let mut location = vec![(0, 0); b.params.len()];
        let mut segments = Vec::new();
        for (s, (ids, layout)) in plan.into_iter().enumerate() {
            for (k, &i) in ids.iter().enumerate() {
                location[i] = (s, k);
            }
            segments.push(Segment::new(ctx, &core, layout, &hyper, &skip)?);
        }
        let mut opt =
            Optimizer { ctx: ctx.clone(), core, segments, location, hyper, skip, pending: None, dispatches: 0 };
        // New buffers are zeroed by wgpu; upload the initial parameters.
        for (i, data) in b.init.iter().enumerate() {
            opt.write_param(ParamId(i), data)?;
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

    /// Number of arena segments (1 unless the model exceeds one storage binding).
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Dispatches recorded by the last step (constant in the number of tensors; tests assert it).
    pub fn dispatches_last_step(&self) -> usize {
        self.dispatches
    }

    /// A parameter inside its parameter arena, for the user's own kernels.
    pub fn param_view(&self, id: ParamId) -> Result<TensorView<'_>> {
        let (seg, off, p) = self.locate(id)?;
        Ok(TensorView { buffer: &seg.params, offset: off, shape: &p.shape })
    }

    /// A gradient inside its gradient arena: write it from the user's own kernels before `step`.
    pub fn grad_view(&self, id: ParamId) -> Result<TensorView<'_>> {
        let (seg, off, p) = self.locate(id)?;
        Ok(TensorView { buffer: &seg.grads, offset: off, shape: &p.shape })
    }

    /// (segment, byte offset, metadata) of a parameter.
    fn locate(&self, id: ParamId) -> Result<(&Segment, u64, &ParamMeta)> {
        let p = self.core.param(id)?;
        let (s, k) = self.location[id.0];
        let seg = &self.segments[s];
        Ok((seg, 4 * seg.layout.offsets[k] as u64, p))
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

    /// Records the dispatches of one step into `pass`, using the hyperparameters already in the
    /// uniform and the skip flag as [`Stepper::step`] clears it; returns the number of dispatches.
    /// (Benchmarks call it in a loop.)
    #[doc(hidden)]
    pub fn record_update(&self, pass: &mut wgpu::ComputePass<'_>) -> usize {
        let mut n = 0;
        for seg in &self.segments {
            for check in seg.check.iter().chain(&seg.check_hess) {
                n += check.record(&self.ctx, pass, (seg.layout.total as u32 / 4).div_ceil(WORKGROUP_SIZE));
            }
        }
        for seg in &self.segments {
            let blocks = seg.layout.blocks.len() as u32;
            if let Some(norms) = &seg.norms {
                n += norms.partial.record(&self.ctx, pass, blocks);
                n += norms.norm.record(&self.ctx, pass, norms.tensors);
            }
            if let Some(update) = &seg.update {
                n += update.record(&self.ctx, pass, blocks);
            }
        }
        n
    }

    /// Writes the uniform for step `t` (benchmarks use it to time the kernels alone).
    #[doc(hidden)]
    pub fn write_hyper(&self, t: u64) {
        let h = self.core.hypers(t);
        self.ctx.queue().write_buffer(&self.hyper, 0, bytemuck::bytes_of(&h));
    }

    fn read_arena(&self, id: ParamId, which: impl Fn(&Segment) -> &wgpu::Buffer) -> Result<Vec<f32>> {
        let (seg, off, p) = self.locate(id)?;
        self.ctx.read_f32(which(seg), off, p.len())
    }

    fn write_arena(
        &self,
        id: ParamId,
        data: &[f32],
        what: &str,
        which: impl Fn(&Segment) -> &wgpu::Buffer,
    ) -> Result<()> {
        self.core.check_len(id, data.len(), what)?;
        let (seg, off, _) = self.locate(id)?;
        if !data.is_empty() {
            self.ctx.queue().write_buffer(which(seg), off, bytemuck::cast_slice(data));
        }
        Ok(())
    }
}

impl Stepper for Optimizer {
    fn step(&mut self) -> Result<()> {
        self.resolve_pending()?;
        let t = self.core.t + 1;
        self.write_hyper(t);
        if self.core.guard {
            // Staged: lands before this step's dispatches, after the last step's read of the flag.
            self.ctx.queue().write_buffer(&self.skip, 0, &[0; 16]);
        }
        let mut encoder = self.ctx.encoder("gpuopt step");
        let (dispatches, staging) = self.ctx.scoped("optimizer step", || {
            let n = self.record_update(&mut crate::gpu::compute_pass(&mut encoder, "gpuopt step"));
            let staging = self.core.guard.then(|| {
                let s = self.ctx.staging(4);
                encoder.copy_buffer_to_buffer(&self.skip, 0, &s, 0, 4);
                s
            });
            (n, staging)
        })?;
        let index = self.ctx.submit(encoder);
        self.dispatches = dispatches;
        self.core.t = t;
        match staging {
            Some(staging) => self.pending = Some(Pending { staging, index }),
            None => self.core.last_non_finite = false,
        }
        Ok(())
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        self.write_arena(id, grad, "gradient", |s| &s.grads)
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        self.write_arena(id, data, "parameter", |s| &s.params)
    }

    fn write_hess_diag(&mut self, id: ParamId, diag: &[f32]) -> Result<()> {
        if !self.core.algorithm.needs_hessian() {
            return Err(Error::Invalid(format!("{} takes no Hessian diagonal", self.core.algorithm.name())));
        }
        self.write_arena(id, diag, "Hessian diagonal", |s| s.hess.as_ref().expect("allocated when needed"))
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        self.read_arena(id, |s| &s.params)
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        let k = self.core.state_index(state)?;
        self.read_arena(id, |s| &s.states[k])
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
        let n = self.core.params.len();
        let n_states = self.core.algorithm.states().len();
        let mut values = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        for i in 0..n {
            values.push(self.read_arena(ParamId(i), |s| &s.params)?);
            states.push((0..n_states).map(|k| self.read_arena(ParamId(i), |s| &s.states[k])).collect::<Result<_>>()?);
        }
        Ok(Snapshot::from_core(&self.core, values, states))
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        self.resolve_pending()?;
        let algorithm = s.check_fits(&self.core)?;
        for i in 0..self.core.params.len() {
            self.write_arena(ParamId(i), &s.values[i], "parameter", |seg| &seg.params)?;
            for (k, state) in s.ordered_states(i, &algorithm)?.iter().enumerate() {
                self.write_arena(ParamId(i), state, "state", |seg| &seg.states[k])?;
            }
        }
        s.apply_core(&mut self.core, algorithm);
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.core.params
    }
}
