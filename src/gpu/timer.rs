//! GPU timing for benchmarks: timestamp queries around a batch of repetitions where the adapter has
//! them, else submit-and-wait wall time; the median over batches, per repetition. Warm-up batches run
//! first (for at least 25 ms), so pipeline compilation, first-touch costs and idle GPU clocks are excluded.

use super::Context;
use crate::error::Result;
use std::time::Instant;

/// A measured duration per repetition.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Median seconds per repetition.
    pub median_s: f64,
    /// "timestamps" or "wall-clock".
    pub method: &'static str,
}

/// Two workloads timed in alternating batches ([`Context::time_paired`]).
#[derive(Clone, Copy, Debug)]
pub struct PairedTiming {
    /// The first workload.
    pub a: Timing,
    /// The second workload.
    pub b: Timing,
    /// The median over batch pairs of b's batch time over a's (`reps_b` repetitions of b against
    /// `reps_a` of a): each pair ran back to back, so a slow spell of a shared machine longer than
    /// one pair inflates both sides of it alike.
    pub ratio: f64,
}

/// Times command buffers: timestamp queries where the adapter has them, else submit-and-wait wall time.
struct Sampler<'a> {
    ctx: &'a Context,
    queries: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    period_ns: f64,
}

impl<'a> Sampler<'a> {
    fn new(ctx: &'a Context) -> Self {
        let device = ctx.device();
        let queries = ctx.info().timestamps.then(|| {
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (set, resolve)
        });
        Sampler { ctx, queries, period_ns: ctx.queue().get_timestamp_period() as f64 }
    }

    /// One command buffer of `reps` repetitions in one compute pass, timestamped at its beginning
    /// and end where the adapter can: (wall seconds, GPU seconds where timestamps work).
    fn run(&self, reps: usize, record: &mut dyn FnMut(&mut wgpu::ComputePass<'_>)) -> Result<(f64, Option<f64>)> {
        let ctx = self.ctx;
        let mut enc = ctx.encoder("bench");
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bench"),
                timestamp_writes: self.queries.as_ref().map(|(set, _)| wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            for _ in 0..reps {
                record(&mut pass);
            }
        }
        let staging = self.queries.as_ref().map(|(set, resolve)| {
            enc.resolve_query_set(set, 0..2, resolve, 0);
            let s = ctx.staging(16);
            enc.copy_buffer_to_buffer(resolve, 0, &s, 0, 16);
            s
        });
        let start = Instant::now();
        let index = ctx.submit(enc);
        ctx.wait_for(Some(index.clone()))?;
        let wall = start.elapsed().as_secs_f64();
        let gpu = match staging {
            Some(s) => {
                let b = ctx.map_staging(&s, Some(index))?;
                let t0 = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
                let t1 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                (t1 > t0).then(|| (t1 - t0) as f64 * self.period_ns * 1e-9)
            }
            None => None,
        };
        Ok((wall, gpu))
    }

    /// Warm-up: pipeline compilation and first touch, and on GPUs that clock down when idle (an
    /// H200 idles at 345 MHz) long enough for the clocks to ramp up: batches until 25 ms have passed.
    fn warm_up(&self, reps: usize, record: &mut dyn FnMut(&mut wgpu::ComputePass<'_>)) -> Result<()> {
        let warm = Instant::now();
        self.run(1, record)?;
        for _ in 0..64 {
            if warm.elapsed().as_secs_f64() >= 0.025 {
                break;
            }
            self.run(reps, record)?;
        }
        Ok(())
    }
}

/// Per-repetition batch times: wall-clock, and GPU timestamps where the batch had them.
#[derive(Default)]
struct Samples {
    wall: Vec<f64>,
    gpu: Vec<f64>,
}

impl Samples {
    fn push(&mut self, (wall, gpu): (f64, Option<f64>), reps: usize) {
        self.wall.push(wall / reps as f64);
        self.gpu.extend(gpu.map(|g| g / reps as f64));
    }

    /// Every batch has a GPU time.
    fn has_gpu(&self) -> bool {
        self.gpu.len() == self.wall.len()
    }

    /// The batch times in the order they ran: GPU times when `gpu`, else wall-clock.
    fn times(&self, gpu: bool) -> &[f64] {
        if gpu {
            &self.gpu
        } else {
            &self.wall
        }
    }

    fn timing(&self, gpu: bool) -> Timing {
        Timing { median_s: median(self.times(gpu).to_vec()), method: if gpu { "timestamps" } else { "wall-clock" } }
    }
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let h = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[h - 1] + v[h]) / 2.0
    } else {
        v[h]
    }
}

impl Context {
    /// Times `record` (which records one repetition into the pass): `batches` command buffers of
    /// `reps` repetitions each.
    pub fn time(
        &self,
        reps: usize,
        batches: usize,
        mut record: impl FnMut(&mut wgpu::ComputePass<'_>),
    ) -> Result<Timing> {
        let reps = reps.max(1);
        let sampler = Sampler::new(self);
        sampler.warm_up(reps, &mut record)?;
        let mut samples = Samples::default();
        for _ in 0..batches.max(1) {
            samples.push(sampler.run(reps, &mut record)?, reps);
        }
        Ok(samples.timing(samples.has_gpu()))
    }

    /// Times two workloads in pairs of batches (`reps_a` and `reps_b` repetitions per batch), a
    /// first in even pairs and b first in odd ones, both warmed up before, for comparing them on a
    /// machine whose speed drifts: see [`PairedTiming::ratio`]. Both sides are timed the same way
    /// (timestamps only where every batch of both had them).
    pub fn time_paired(
        &self,
        (reps_a, mut record_a): (usize, impl FnMut(&mut wgpu::ComputePass<'_>)),
        (reps_b, mut record_b): (usize, impl FnMut(&mut wgpu::ComputePass<'_>)),
        batches: usize,
    ) -> Result<PairedTiming> {
        let (reps_a, reps_b) = (reps_a.max(1), reps_b.max(1));
        let sampler = Sampler::new(self);
        sampler.warm_up(reps_a, &mut record_a)?;
        sampler.warm_up(reps_b, &mut record_b)?;
        let (mut a, mut b) = (Samples::default(), Samples::default());
        for pair in 0..batches.max(1) {
            if !pair.is_multiple_of(2) {
                b.push(sampler.run(reps_b, &mut record_b)?, reps_b);
            }
            a.push(sampler.run(reps_a, &mut record_a)?, reps_a);
            if pair.is_multiple_of(2) {
                b.push(sampler.run(reps_b, &mut record_b)?, reps_b);
            }
        }
        let gpu = a.has_gpu() && b.has_gpu();
        let pairs = a.times(gpu).iter().zip(b.times(gpu));
        let ratio = median(pairs.map(|(x, y)| y * reps_b as f64 / (x * reps_a as f64)).collect());
        Ok(PairedTiming { a: a.timing(gpu), b: b.timing(gpu), ratio })
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
