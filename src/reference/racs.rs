//! CPU twin of REG / RACS (`src/optim/reg.rs`, `shaders/racs.wgsl`), in the shader's order.

use super::dasgo::column_sums;
use super::muon::lerp_torch;
use crate::error::{Error, Result};
use crate::optim::reg::{racs_view, reg_state_len, RegBuilder, RegConfig, WIDE_ROWS};
use crate::optim::HostGuard;
use crate::optim::{
    check_config_snapshot, config_snapshot, update_config, GroupId, ParamId, ParamMeta, Snapshot, Stepper,
};

/// One RACS step of a rows × cols tensor; `theta` carries the limiter's state. Returns η.
#[allow(clippy::too_many_arguments)]
pub fn racs_step(
    c: &RegConfig,
    t: u64,
    p: &mut [f32],
    g: &[f32],
    s: &mut [f32],
    q: &mut [f32],
    theta: &mut f32,
    rows: usize,
    cols: usize,
) -> f32 {
    let h = c.params(rows, cols, t);
    let sq = |i: usize, j: usize| g[i * cols + j] * g[i * cols + j];
    for (i, si) in s.iter_mut().enumerate().take(rows) {
        let sum = if cols >= WIDE_ROWS {
            // The shader's workgroup: lane l sums columns l, l + 256, … (or, where cols % 4 == 0,
            // vec4 columns l, l + 256, … component by component, then the four components in
            // order); then 16 groups of 16 lanes, then the 16 group sums (shaders/shared/reduce.wgsl
            // `workgroup_sum`).
            let lane = |l: usize| {
                if cols.is_multiple_of(4) {
                    let mut a = [0.0f32; 4];
                    for j in (l..cols / 4).step_by(256) {
                        for (c, ac) in a.iter_mut().enumerate() {
                            *ac += sq(i, 4 * j + c);
                        }
                    }
                    a[0] + a[1] + a[2] + a[3]
                } else {
                    (l..cols).step_by(256).fold(0.0f32, |a, j| a + sq(i, j))
                }
            };
            let lanes: Vec<f32> = (0..256).map(lane).collect();
            lanes.chunks(16).map(|c| c.iter().fold(0.0f32, |a, &x| a + x)).fold(0.0f32, |a, x| a + x)
        } else {
            (0..cols).fold(0.0f32, |a, j| a + sq(i, j))
        };
        *si = lerp_torch(*si, sum / cols as f32, h.omb);
    }
    let sums = column_sums(&g[..rows * cols], rows, cols, (h.bands as usize, h.band_rows as usize));
    for (qj, sum) in q.iter_mut().zip(sums) {
        *qj = lerp_torch(*qj, sum / rows as f32, h.omb);
    }
    let gh = |k: usize| g[k] / ((s[k / cols] + h.eps).sqrt() * (q[k % cols] + h.eps).sqrt());
    let norm = ((0..rows * cols).map(|k| (gh(k) as f64).powi(2)).sum::<f64>()).sqrt() as f32;
    let eta = if h.first != 0 { 1.0 } else { h.gamma / (norm / (*theta + h.eps)).max(h.gamma) };
    *theta = norm * eta;
    for (k, pk) in p.iter_mut().enumerate().take(rows * cols) {
        *pk = h.decay * *pk - (h.step * eta) * gh(k);
    }
    eta
}

/// The CPU reference REG (RACS).
#[derive(Clone, Debug)]
pub struct CpuReg {
    config: RegConfig,
    metas: Vec<ParamMeta>,
    p: Vec<Vec<f32>>,
    g: Vec<Vec<f32>>,
    s: Vec<Vec<f32>>,
    q: Vec<Vec<f32>>,
    theta: Vec<f32>,
    t: u64,
    guard: HostGuard,
}

impl CpuReg {
    pub(crate) fn new(b: RegBuilder) -> Self {
        let metas: Vec<ParamMeta> = b.params.iter().map(|x| x.0.clone()).collect();
        let views: Vec<(usize, usize)> = metas.iter().map(|m| racs_view(&m.shape)).collect();
        CpuReg {
            config: b.config.clone(),
            p: b.params.iter().map(|x| x.1.clone()).collect(),
            g: b.params.iter().map(|x| vec![0.0; x.1.len()]).collect(),
            s: views.iter().map(|v| vec![0.0; v.0]).collect(),
            q: views.iter().map(|v| vec![1.0; v.1]).collect(),
            theta: vec![0.0; metas.len()],
            guard: HostGuard::new(metas.len()),
            metas,
            t: 0,
        }
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

impl Stepper for CpuReg {
    fn step(&mut self) -> Result<()> {
        // A gradient with NaN or Inf (not rewritten since) skips the step; nothing changes.
        if self.guard.skip_step() {
            return Ok(());
        }
        self.t += 1;
        for i in 0..self.metas.len() {
            if self.p[i].is_empty() {
                continue;
            }
            let (r, c) = racs_view(&self.metas[i].shape);
            racs_step(
                &self.config,
                self.t,
                &mut self.p[i],
                &self.g[i],
                &mut self.s[i],
                &mut self.q[i],
                &mut self.theta[i],
                r,
                c,
            );
        }
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
        match state {
            "s" => Ok(self.s[id.0].clone()),
            "q" => Ok(self.q[id.0].clone()),
            "theta" => Ok(vec![self.theta[id.0]]),
            other => Err(Error::Invalid(format!("reg has no state {other:?} (s, q, theta)"))),
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
        update_config(&mut self.config, group, |c| c.lr = lr, RegConfig::validate)
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        update_config(&mut self.config, group, |c| c.weight_decay = wd, RegConfig::validate)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let states = (0..self.metas.len())
            .map(|i| {
                if self.p[i].is_empty() {
                    return vec![("s".into(), vec![]), ("q".into(), vec![]), ("theta".into(), vec![])];
                }
                vec![
                    ("s".into(), self.s[i].clone()),
                    ("q".into(), self.q[i].clone()),
                    ("theta".into(), vec![self.theta[i]]),
                ]
            })
            .collect();
        let lr_wd = (self.config.lr, self.config.weight_decay);
        let mut s = config_snapshot("reg", &self.config, lr_wd, self.t, &self.metas, self.p.clone(), states);
        s.skipped = self.guard.skipped();
        Ok(s)
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let (config, states) =
            check_config_snapshot(&s, "reg", &self.metas, &["s", "q", "theta"], reg_state_len, RegConfig::validate)?;
        for (i, st) in states.into_iter().enumerate() {
            if self.p[i].is_empty() {
                continue;
            }
            self.s[i] = st[0].clone();
            self.q[i] = st[1].clone();
            self.theta[i] = st[2][0];
        }
        self.p = s.values.clone();
        self.config = config;
        self.t = s.step;
        self.guard.reset(s.skipped);
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.metas
    }
}
