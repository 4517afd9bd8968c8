//! CPU twin of Muon (`src/optim/muon.rs`, `shaders/muon.wgsl`): the same momentum arithmetic, NS5 from
//! `reference::newton_schulz` one matrix at a time, and the CPU AdamW for routed parameters.

use super::CpuOptimizer;
use crate::error::{Error, Result};
use crate::optim::muon::{muon_snapshot, split_muon_snapshot, MuonBuilder, MuonConfig, Route};
use crate::optim::HostGuard;
use crate::optim::{GroupId, ParamId, ParamMeta, Snapshot, Stepper};

/// torch's lerp (ALGORITHMS.md §2.7), as `lerp_torch` in the shader.
pub fn lerp_torch(a: f32, b: f32, w: f32) -> f32 {
    if w < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

/// One Muon step of one matrix (rows × cols): momentum, NS5, update.
pub fn muon_step(c: &MuonConfig, p: &mut [f32], g: &[f32], m: &mut [f32], rows: usize, cols: usize) {
    let h = c.params(p.len(), rows, cols);
    let mut u = vec![0.0; p.len()];
    for i in 0..p.len() {
        m[i] = lerp_torch(m[i], g[i], h.omb);
        u[i] = if h.nesterov != 0 { lerp_torch(g[i], m[i], h.beta) } else { m[i] };
    }
    let o = super::newton_schulz::newton_schulz5(&u, 1, rows, cols, c.ns_steps, c.coefficients());
    for i in 0..p.len() {
        p[i] = h.decay * p[i] - h.step * o[i];
    }
}

/// The CPU reference Muon with its auxiliary CPU AdamW.
#[derive(Clone, Debug)]
pub struct CpuMuon {
    config: MuonConfig,
    params: Vec<ParamMeta>,
    routes: Vec<Route>,
    p: Vec<Vec<f32>>,
    g: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    aux: Option<CpuOptimizer>,
    aux_ids: Vec<Option<ParamId>>,
    t: u64,
    guard: HostGuard,
}

impl CpuMuon {
    pub(crate) fn new(b: MuonBuilder) -> Result<Self> {
        let (ab, aux_ids) = b.aux_builder()?;
        let aux = if aux_ids.iter().any(Option::is_some) { Some(ab.build_cpu()?) } else { None };
        Ok(CpuMuon {
            config: b.config.clone(),
            params: b.params.iter().map(|p| p.0.clone()).collect(),
            routes: b.params.iter().map(|p| p.2).collect(),
            p: b.params.iter().map(|p| p.1.clone()).collect(),
            g: b.params.iter().map(|p| vec![0.0; p.1.len()]).collect(),
            m: b.params.iter().map(|p| vec![0.0; p.1.len()]).collect(),
            aux,
            aux_ids,
            t: 0,
            guard: HostGuard::new(b.params.len()),
        })
    }

    fn check(&self, id: ParamId, len: Option<usize>) -> Result<()> {
        let meta = self.params.get(id.0).ok_or_else(|| Error::Invalid(format!("no parameter {}", id.0)))?;
        if let Some(len) = len {
            if len != meta.len() {
                return Err(Error::Shape { what: meta.name.clone(), expected: meta.shape.clone(), got: vec![len] });
            }
        }
        Ok(())
    }

    fn aux(&mut self, id: ParamId) -> Result<(&mut CpuOptimizer, ParamId)> {
        let aid = self.aux_ids[id.0].ok_or_else(|| Error::Invalid("not an AdamW parameter".into()))?;
        Ok((self.aux.as_mut().expect("aux exists"), aid))
    }
}

impl Stepper for CpuMuon {
    fn step(&mut self) -> Result<()> {
        // A gradient with NaN or Inf (not rewritten since) skips the step; nothing changes.
        if self.guard.skip_step() {
            return Ok(());
        }
        for i in 0..self.params.len() {
            if self.routes[i] == Route::Muon {
                // A 3-D parameter: each of its matrices on its own (their slices are contiguous).
                let (_, rows, cols) = MuonBuilder::matrices(&self.params[i].shape);
                let len = rows * cols;
                let (p, m) = (self.p[i].chunks_mut(len), self.m[i].chunks_mut(len));
                for ((p, m), g) in p.zip(m).zip(self.g[i].chunks(len)) {
                    muon_step(&self.config, p, g, m, rows, cols);
                }
            }
        }
        if let Some(aux) = &mut self.aux {
            aux.step()?;
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
        match self.routes[id.0] {
            Route::Muon => {
                self.g[id.0].copy_from_slice(grad);
                Ok(())
            }
            Route::AdamW => {
                let (a, aid) = self.aux(id)?;
                a.write_grad(aid, grad)
            }
        }
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        self.check(id, Some(data.len()))?;
        match self.routes[id.0] {
            Route::Muon => {
                self.p[id.0].copy_from_slice(data);
                Ok(())
            }
            Route::AdamW => {
                let (a, aid) = self.aux(id)?;
                a.write_param(aid, data)
            }
        }
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        self.check(id, None)?;
        match self.routes[id.0] {
            Route::Muon => Ok(self.p[id.0].clone()),
            Route::AdamW => {
                let (a, aid) = self.aux(id)?;
                a.read_param(aid)
            }
        }
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        self.check(id, None)?;
        match (self.routes[id.0], state) {
            (Route::Muon, "momentum_buffer") => Ok(self.m[id.0].clone()),
            (Route::Muon, other) => Err(Error::Invalid(format!("muon has no state {other:?}"))),
            (Route::AdamW, _) => {
                let (a, aid) = self.aux(id)?;
                a.read_state(aid, state)
            }
        }
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
        match group.0 {
            0 => {
                let next = MuonConfig { lr, ..self.config.clone() };
                next.validate()?;
                self.config = next;
                Ok(())
            }
            1 => self.aux.as_mut().ok_or_else(|| Error::Invalid("no AdamW parameters".into()))?.set_lr(GroupId(0), lr),
            g => Err(Error::Invalid(format!("no group {g} (0: Muon, 1: AdamW)"))),
        }
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        match group.0 {
            0 => {
                let next = MuonConfig { weight_decay: wd, ..self.config.clone() };
                next.validate()?;
                self.config = next;
                Ok(())
            }
            1 => self
                .aux
                .as_mut()
                .ok_or_else(|| Error::Invalid("no AdamW parameters".into()))?
                .set_weight_decay(GroupId(0), wd),
            g => Err(Error::Invalid(format!("no group {g} (0: Muon, 1: AdamW)"))),
        }
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let momentum =
            (0..self.params.len()).map(|i| (self.routes[i] == Route::Muon).then(|| self.m[i].clone())).collect();
        let values = (0..self.params.len()).map(|i| self.read_param(ParamId(i))).collect::<Result<Vec<_>>>()?;
        let aux = match &mut self.aux {
            Some(a) => Some(a.snapshot()?),
            None => None,
        };
        let mut s = muon_snapshot(&self.config, self.t, &self.params, &self.aux_ids, values, momentum, aux);
        s.skipped = self.guard.skipped();
        Ok(s)
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let aux_params = self.aux.as_ref().map(|a| a.params().to_vec()).unwrap_or_default();
        let (config, momentum, aux) = split_muon_snapshot(&s, &self.params, &self.aux_ids, &aux_params)?;
        if let (Some(a), Some(snap)) = (&mut self.aux, aux) {
            a.restore(snap)?;
        }
        for (i, m) in momentum.into_iter().enumerate() {
            if let Some(m) = m {
                self.m[i] = m;
                self.p[i] = s.values[i].clone();
            }
        }
        self.config = config;
        self.t = s.step;
        self.guard.reset(s.skipped);
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.params
    }
}
