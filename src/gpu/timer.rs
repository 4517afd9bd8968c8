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
    /// The fastest batch's seconds per repetition: on a shared machine, whose slow spells inflate
    /// medians, the estimate least inflated by them (with few batches it can still miss a quiet one).
    pub min_s: f64,
    /// "timestamps" or "wall-clock".
    pub method: &'static str,
}

impl Context {
    /// Times `record` (which records one repetition into the encoder): `batches` command buffers of
    /// `reps` repetitions each.
    pub fn time(
        &self,
        reps: usize,
        batches: usize,
        mut record: impl FnMut(&mut wgpu::CommandEncoder),
    ) -> Result<Timing> {
        let device = self.device();
        let queries = self.info().timestamps.then(|| {
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
        let period_ns = self.queue().get_timestamp_period() as f64;
        let mut run = |reps: usize| -> Result<(f64, Option<f64>)> {
            let mut enc = self.encoder("bench");
            let mark = |enc: &mut wgpu::CommandEncoder, begin: Option<u32>, end: Option<u32>| {
                if let Some((set, _)) = &queries {
                    enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("timestamp"),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: begin,
                            end_of_pass_write_index: end,
                        }),
                    });
                }
            };
            mark(&mut enc, Some(0), None);
            for _ in 0..reps {
                record(&mut enc);
            }
            mark(&mut enc, None, Some(1));
            let staging = queries.as_ref().map(|(set, resolve)| {
                enc.resolve_query_set(set, 0..2, resolve, 0);
                let s = self.staging(16);
                enc.copy_buffer_to_buffer(resolve, 0, &s, 0, 16);
                s
            });
            let start = Instant::now();
            let index = self.submit(enc);
            self.wait_for(Some(index.clone()))?;
            let wall = start.elapsed().as_secs_f64();
            let gpu = match staging {
                Some(s) => {
                    let b = self.map_staging(&s, Some(index))?;
                    let t0 = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
                    let t1 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                    (t1 > t0).then(|| (t1 - t0) as f64 * period_ns * 1e-9)
                }
                None => None,
            };
            Ok((wall, gpu))
        };
        // Warm-up: pipeline compilation and first touch, and on GPUs that clock down when idle (an
        // H200 idles at 345 MHz) long enough for the clocks to ramp up: batches until 25 ms have passed.
        let warm = Instant::now();
        run(1)?;
        for _ in 0..64 {
            if warm.elapsed().as_secs_f64() >= 0.025 {
                break;
            }
            run(reps.max(1))?;
        }
        let mut wall = Vec::new();
        let mut gpu = Vec::new();
        for _ in 0..batches.max(1) {
            let (w, g) = run(reps.max(1))?;
            wall.push(w / reps.max(1) as f64);
            gpu.extend(g.map(|g| g / reps.max(1) as f64));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        if gpu.len() == wall.len() {
            Ok(Timing { median_s: median(&mut gpu), min_s: gpu[0], method: "timestamps" })
        } else {
            Ok(Timing { median_s: median(&mut wall), min_s: wall[0], method: "wall-clock" })
        }
    }
}
