//! The CPU reference: every kernel written plainly, mirroring its shader line by line, and
//! [`CpuOptimizer`], which runs an [`Algorithm`] with the same host-side scalars as the GPU
//! [`crate::optim::Optimizer`]. Parity tests and `gpuopt parity` hold the GPU to it; `gpuopt replay
//! --backend cpu` runs it.

pub mod adaptive;
pub mod auon;
pub mod dasgo;
pub mod distributed_lion;
pub mod gemm;
pub mod hessian;
pub mod hutchinson;
pub mod lion_k;
pub mod muon;
pub mod newton_schulz;
pub mod racs;
pub mod random;
pub mod roots;
pub mod sign_momentum;

use crate::error::Result;
use crate::kernels::arena::Hyper;
use crate::optim::{Algorithm, Core, GroupId, KMap, OptimizerBuilder, ParamId, ParamMeta, Snapshot, Stepper};
use ndarray::{ArrayD, IxDyn};

/// sign with sign(±0) = 0 (and 0 for NaN, which the guard keeps out), as WGSL's `sign`.
/// (`f32::signum` returns 1 for +0 and must not be used.)
pub fn sgn(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// CPU twin of `shaders/check.wgsl`: true when any element is NaN or ±Inf (exponent bits all ones).
pub fn has_non_finite(data: &[f32]) -> bool {
    data.iter().any(|x| x.to_bits() & 0x7f80_0000 == 0x7f80_0000)
}

/// One tensor's update: dispatches to the kernel `algorithm` uses, with its state tensors in
/// [`Algorithm::states`] order.
pub fn step_tensor(algorithm: &Algorithm, h: &Hyper, p: &mut [f32], g: &[f32], d: &[f32], states: &mut [Vec<f32>]) {
    use adaptive as a;
    use sign_momentum as s;
    match (algorithm, states) {
        (Algorithm::Sgd(_), []) => s::sgd_step(h, p, g),
        (Algorithm::Sgd(_), [b]) => s::sgd_momentum_step(h, p, g, b),
        (Algorithm::SignSgd(_), []) => s::signsgd_step(h, p, g),
        (Algorithm::Signum(_), [m]) => s::signum_step(h, p, g, m),
        (Algorithm::Lion(c), [m]) if c.k_map == KMap::Sign => s::lion_step(h, p, g, m),
        (Algorithm::Lion(c), [m]) if c.k_map.per_tensor() => {
            let norm = lion_k::lion_k_norm(h, g, m);
            lion_k::lion_k_norm_step(h, p, g, m, norm)
        }
        (Algorithm::Lion(_), [m]) => lion_k::lion_k_step(h, p, g, m),
        (Algorithm::Ano(_) | Algorithm::Anolog(_), [m, v]) => s::ano_step(h, p, g, m, v),
        (Algorithm::AdamW(_), [m, v]) => a::adamw_step(h, p, g, m, v, None),
        (Algorithm::AdamW(_), [m, v, vm]) => a::adamw_step(h, p, g, m, v, Some(vm)),
        (Algorithm::AdaBound(_), [m, v]) => a::adabound_step(h, p, g, m, v, None),
        (Algorithm::AdaBound(_), [m, v, vm]) => a::adabound_step(h, p, g, m, v, Some(vm)),
        (Algorithm::AdaMomentum(_), [m, v]) => a::adamomentum_step(h, p, g, m, v),
        (Algorithm::AdEMAMix(_), [m1, m2, v]) => a::ademamix_step(h, p, g, m1, m2, v),
        (Algorithm::Mars(_), [m, v, gp]) => {
            let norm = a::mars_norm(h, g, gp);
            a::mars_adamw_step(h, p, g, m, v, gp, norm)
        }
        (Algorithm::Mars(_), [m, gp]) => {
            let norm = a::mars_norm(h, g, gp);
            a::mars_lion_step(h, p, g, m, gp, norm)
        }
        (Algorithm::AdaHessian(_), [m, v]) => hessian::adahessian_step(h, p, g, d, m, v),
        (Algorithm::Sophia(c), [m, hh]) if c.variant == crate::optim::algorithm::SophiaVariant::Sophiah => {
            hessian::sophiah_step(h, p, g, d, m, hh)
        }
        (Algorithm::Sophia(_), [m, hh]) => hessian::sophiag_step(h, p, g, d, m, hh),
        (alg, st) => unreachable!("{} with {} state tensors", alg.name(), st.len()),
    }
}

/// The CPU reference optimizer: same builder, same semantics as the GPU one, ndarray storage.
#[derive(Clone, Debug)]
pub struct CpuOptimizer {
    core: Core,
    params: Vec<ArrayD<f32>>,
    grads: Vec<ArrayD<f32>>,
    hess: Vec<Vec<f32>>,
    states: Vec<Vec<Vec<f32>>>,
}

impl CpuOptimizer {
    pub(crate) fn new(b: OptimizerBuilder) -> Self {
        let core = Core::new(&b);
        let n_states = core.algorithm.states().len();
        let params: Vec<ArrayD<f32>> = b
            .params
            .iter()
            .zip(&b.init)
            .map(|(p, d)| ArrayD::from_shape_vec(IxDyn(&p.shape), d.clone()).expect("length checked by the builder"))
            .collect();
        let grads = params.iter().map(|p| ArrayD::zeros(p.raw_dim())).collect();
        let states = b.params.iter().map(|p| vec![vec![0.0; p.len()]; n_states]).collect();
        let hess = b.params.iter().map(|p| vec![0.0; p.len()]).collect();
        CpuOptimizer { core, params, grads, hess, states }
    }

    /// A parameter as an ndarray.
    pub fn param_array(&self, id: ParamId) -> Result<&ArrayD<f32>> {
        self.core.param(id)?;
        Ok(&self.params[id.0])
    }
}

impl Stepper for CpuOptimizer {
    fn step(&mut self) -> Result<()> {
        let bad_grads = self.grads.iter().any(|g| has_non_finite(g.as_slice().expect("standard layout")));
        if self.core.guard && (bad_grads || self.hess.iter().any(|d| has_non_finite(d))) {
            self.core.skipped += 1;
            self.core.last_non_finite = true;
            return Ok(());
        }
        self.core.last_non_finite = false;
        self.core.t += 1;
        let hypers = self.core.hypers(self.core.t);
        for (i, meta) in self.core.params.iter().enumerate() {
            let p = self.params[i].as_slice_mut().expect("standard layout");
            let g = self.grads[i].as_slice().expect("standard layout");
            step_tensor(&self.core.algorithm, &hypers.g[meta.group], p, g, &self.hess[i], &mut self.states[i]);
        }
        Ok(())
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        self.core.check_len(id, grad.len(), "gradient")?;
        self.grads[id.0].as_slice_mut().expect("standard layout").copy_from_slice(grad);
        Ok(())
    }

    fn write_hess_diag(&mut self, id: ParamId, diag: &[f32]) -> Result<()> {
        if !self.core.algorithm.needs_hessian() {
            return Err(crate::Error::Invalid(format!("{} takes no Hessian diagonal", self.core.algorithm.name())));
        }
        self.core.check_len(id, diag.len(), "Hessian diagonal")?;
        self.hess[id.0].copy_from_slice(diag);
        Ok(())
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        self.core.check_len(id, data.len(), "parameter")?;
        self.params[id.0].as_slice_mut().expect("standard layout").copy_from_slice(data);
        Ok(())
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        Ok(self.param_array(id)?.iter().copied().collect())
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        self.core.param(id)?;
        let k = self.core.state_index(state)?;
        Ok(self.states[id.0][k].clone())
    }

    fn step_count(&mut self) -> Result<u64> {
        Ok(self.core.t)
    }

    fn found_non_finite(&mut self) -> Result<bool> {
        Ok(self.core.last_non_finite)
    }

    fn skipped_steps(&mut self) -> Result<u64> {
        Ok(self.core.skipped)
    }

    fn set_lr(&mut self, group: GroupId, lr: f64) -> Result<()> {
        self.core.set_lr(group, lr)
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        self.core.set_weight_decay(group, wd)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let values = self.params.iter().map(|p| p.iter().copied().collect()).collect();
        Ok(Snapshot::from_core(&self.core, values, self.states.clone()))
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let algorithm = s.check_fits(&self.core)?;
        let states = (0..self.params.len()).map(|i| s.ordered_states(i, &algorithm)).collect::<Result<_>>()?;
        for (p, v) in self.params.iter_mut().zip(&s.values) {
            p.as_slice_mut().expect("standard layout").copy_from_slice(v);
        }
        self.states = states;
        s.apply_core(&mut self.core, algorithm);
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.core.params
    }
}
