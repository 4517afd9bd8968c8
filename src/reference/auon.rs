//! CPU twin of AuON / Hybrid-AuON (`src/optim/auon.rs`, `shaders/auon.wgsl`).

use super::muon::lerp_torch;
use crate::error::{Error, Result};
use crate::kernels::newton_schulz::NS_EPS;
use crate::optim::auon::{AuonBuilder, AuonConfig, AuonVariant};
use crate::optim::HostGuard;
use crate::optim::{
    check_config_snapshot, config_snapshot, update_config, GroupId, ParamId, ParamMeta, Snapshot, Stepper,
};

/// One AuON step of one tensor; `ns` = Some((slices, rows, cols)) runs NS5 on the update's slices
/// first (Hybrid, [`AuonBuilder::ns_view`]). The paper's Hybrid-AuON runs NS5 on X = u/(‖u‖ + 1e-7)
/// (its (5.5.1)), the package's on u.
pub fn auon_step(c: &AuonConfig, p: &mut [f32], g: &[f32], m: &mut [f32], ns: Option<(usize, usize, usize)>) {
    let mp = c.momentum_params(p.len());
    let mut u = vec![0.0; p.len()];
    for i in 0..p.len() {
        m[i] = lerp_torch(m[i], g[i], mp.omb);
        u[i] = lerp_torch(g[i], m[i], mp.beta);
    }
    let v = match ns {
        Some((slices, r, cl)) => {
            if c.variant == AuonVariant::Paper {
                let nu = super::newton_schulz::frobenius(&u);
                u.iter_mut().for_each(|x| *x /= nu + NS_EPS);
            }
            super::newton_schulz::newton_schulz5(&u, slices, r, cl, c.ns_steps, c.coefficients())
        }
        None => u,
    };
    let ap = c.apply_params(p.len(), 1, ns.is_some());
    let n = super::newton_schulz::frobenius(&v);
    let (gamma, normalise) = c.cosh_scale(ns.is_some());
    let s = if normalise { gamma / (n + NS_EPS) } else { gamma };
    let cosh_sum: f64 = v.iter().map(|&x| ((s * x).cosh() as f64).powi(2)).sum();
    let rms = (cosh_sum.sqrt() as f32) * ap.inv_sqrt_n;
    for i in 0..p.len() {
        let p0 = ap.decay * p[i];
        if n == 0.0 {
            p[i] = p0;
            continue;
        }
        let x = if ap.paper != 0 { v[i] / (n + 1e-7) } else { v[i] };
        p[i] = p0 - ap.lr * (x / (rms + 1e-8));
    }
}

/// The CPU reference AuON / Hybrid-AuON.
#[derive(Clone, Debug)]
pub struct CpuAuon {
    b: AuonBuilder,
    p: Vec<Vec<f32>>,
    g: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    metas: Vec<ParamMeta>,
    t: u64,
    guard: HostGuard,
}

impl CpuAuon {
    pub(crate) fn new(b: AuonBuilder) -> Self {
        let p: Vec<Vec<f32>> = b.params.iter().map(|x| x.1.clone()).collect();
        let zeros = p.iter().map(|v| vec![0.0; v.len()]).collect::<Vec<_>>();
        let metas = b.params.iter().map(|x| x.0.clone()).collect();
        let guard = HostGuard::new(p.len());
        CpuAuon { g: zeros.clone(), m: zeros, p, metas, b, t: 0, guard }
    }

    fn check(&self, id: ParamId, len: Option<usize>) -> Result<()> {
        let meta = self.metas.get(id.0).ok_or_else(|| Error::Invalid(format!("no parameter {}", id.0)))?;
        match len {
            Some(l) if l != meta.len() => {
                Err(Error::Shape { what: meta.name.clone(), expected: meta.shape.clone(), got: vec![l] })
            }
            _ => Ok(()),
        }
    }
}

impl Stepper for CpuAuon {
    fn step(&mut self) -> Result<()> {
        // A gradient with NaN or Inf (not rewritten since) skips the step; nothing changes.
        if self.guard.skip_step() {
            return Ok(());
        }
        for i in 0..self.metas.len() {
            let shape = &self.metas[i].shape;
            if self.p[i].is_empty() {
                continue;
            }
            let ns = self.b.uses_ns(shape).then(|| AuonBuilder::ns_view(shape));
            auon_step(&self.b.config, &mut self.p[i], &self.g[i], &mut self.m[i], ns);
        }
        self.t += 1;
        Ok(())
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        self.check(id, Some(grad.len()))?;
        // A non-finite gradient is not written; the next step is skipped unless it is rewritten.
        if !self.guard.admit(id.0, grad) {
            return Ok(());
        }
        self.g[id.0].copy_from_slice(grad);
        Ok(())
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        self.check(id, Some(data.len()))?;
        self.p[id.0].copy_from_slice(data);
        Ok(())
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        self.check(id, None)?;
        Ok(self.p[id.0].clone())
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        self.check(id, None)?;
        if state != "momentum_buffer" {
            return Err(Error::Invalid(format!("auon has no state {state:?}")));
        }
        Ok(self.m[id.0].clone())
    }

    fn step_count(&mut self) -> Result<u64> {
        Ok(self.t)
    }

    fn found_non_finite(&mut self) -> Result<bool> {
        Ok(self.guard.last_skipped())
    }

    fn skipped_steps(&mut self) -> Result<u64> {
        Ok(self.guard.skipped())
    }

    fn set_lr(&mut self, group: GroupId, lr: f64) -> Result<()> {
        update_config(&mut self.b.config, group, |c| c.lr = lr, AuonConfig::validate)
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        update_config(&mut self.b.config, group, |c| c.weight_decay = wd, AuonConfig::validate)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let states = self.m.iter().map(|m| vec![("momentum_buffer".to_string(), m.clone())]).collect();
        let name = if self.b.hybrid { "hybrid_auon" } else { "auon" };
        let lr_wd = (self.b.config.lr, self.b.config.weight_decay);
        let mut s = config_snapshot(name, &self.b.config, lr_wd, self.t, &self.metas, self.p.clone(), states);
        s.skipped = self.guard.skipped();
        Ok(s)
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let name = if self.b.hybrid { "hybrid_auon" } else { "auon" };
        let (config, states) =
            check_config_snapshot(&s, name, &self.metas, &["momentum_buffer"], |p, _| p.len(), AuonConfig::validate)?;
        self.p = s.values.clone();
        self.m = states.into_iter().map(|mut st| st.remove(0)).collect();
        self.b.config = config;
        self.t = s.step;
        self.guard.reset(s.skipped);
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.metas
    }
}
