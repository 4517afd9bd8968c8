//! `shaders/random.wgsl`: counter-based Rademacher and uniform draws into a tensor, and the raw
//! Philox kernel the known-answer tests use. CPU twin: `reference::random`.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use bytemuck::{Pod, Zeroable};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// ±1 draws.
pub const RADEMACHER_FILL: KernelSpec =
    KernelSpec { module: "random", entry: "rademacher_fill", bindings: &[(0, U), (1, W)] };
/// Uniform [0, 1) draws.
pub const UNIFORM_FILL: KernelSpec =
    KernelSpec { module: "random", entry: "uniform_fill", bindings: &[(0, U), (1, W)] };
/// Raw Philox outputs for (counter, key) pairs.
pub const PHILOX_RAW: KernelSpec = KernelSpec { module: "random", entry: "philox_raw", bindings: &[(2, R), (3, W)] };
/// Z\[k\]\[i\] = z_i of samples k0 .. k0 + samples − 1, in one dispatch.
pub const RADEMACHER_SAMPLES: KernelSpec =
    KernelSpec { module: "random", entry: "rademacher_samples", bindings: &[(0, U), (1, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[RADEMACHER_FILL, UNIFORM_FILL, PHILOX_RAW, RADEMACHER_SAMPLES];

/// Uniform of `shaders/random.wgsl`. Keep in sync with `struct RandomParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct RandomParams {
    /// Seed, low word.
    pub seed_lo: u32,
    /// Seed, high word.
    pub seed_hi: u32,
    /// Sample (or step) counter k.
    pub sample: u32,
    /// Tensor id.
    pub tensor_id: u32,
    /// Elements to draw.
    pub len: u32,
    /// Index of element 0, low word.
    pub offset_lo: u32,
    /// Index of element 0, high word.
    pub offset_hi: u32,
    /// Number of samples (`rademacher_samples`).
    pub samples: u32,
}
const _: () = assert!(std::mem::size_of::<RandomParams>() == 32);

/// Which distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Draw {
    /// ±1 with probability ½.
    Rademacher,
    /// [0, 1), 24 random bits.
    Uniform,
}

/// Fills `out` with draws for sample `k` of `tensor_id` under `seed` (elements `offset ..`).
///
/// ```
/// use gpuopt::kernels::random::{fill, Draw};
/// # let ctx = gpuopt::Context::new()?;
/// let z = gpuopt::Tensor::zeros(&ctx, &[1000])?;
/// fill(&ctx, &z, Draw::Rademacher, 7, 0, 0, 0)?;
/// // The same draws as the CPU's, bit for bit, whatever the dispatch geometry.
/// assert_eq!(z.to_vec(&ctx)?, gpuopt::reference::random::rademacher(7, 0, 0, 0, 1000));
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn fill(ctx: &Context, out: &Tensor, draw: Draw, seed: u64, k: u32, tensor_id: u32, offset: u64) -> Result<()> {
    let len = out.len();
    if len == 0 {
        return Ok(());
    }
    if len > u32::MAX as usize {
        return Err(Error::Invalid("random fill of more than 2^32 elements: draw it in pieces with `offset`".into()));
    }
    let p = RandomParams {
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        sample: k,
        tensor_id,
        len: len as u32,
        offset_lo: offset as u32,
        offset_hi: (offset >> 32) as u32,
        samples: 1,
    };
    let u = ctx.uniform_buffer("random params", 32);
    ctx.queue().write_buffer(&u, 0, bytemuck::bytes_of(&p));
    let spec = match draw {
        Draw::Rademacher => &RADEMACHER_FILL,
        Draw::Uniform => &UNIFORM_FILL,
    };
    let bound = ctx.bind(spec, &[&u, out.buffer()])?;
    let mut enc = ctx.encoder("random fill");
    let mut pass = crate::gpu::compute_pass(&mut enc, "random fill");
    bound.record(ctx, &mut pass, (len as u32).div_ceil(WORKGROUP_SIZE));
    drop(pass);
    ctx.submit(enc);
    Ok(())
}

/// Philox-4x32-10 on the GPU for each (counter, key) pair (the known-answer tests' hook).
pub fn philox_raw(ctx: &Context, pairs: &[([u32; 4], [u32; 2])]) -> Result<Vec<[u32; 4]>> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let mut words = Vec::with_capacity(8 * pairs.len());
    for (c, k) in pairs {
        words.extend_from_slice(c);
        words.extend_from_slice(&[k[0], k[1], 0, 0]);
    }
    let input = ctx.storage_buffer("philox in", 4 * words.len() as u64)?;
    ctx.queue().write_buffer(&input, 0, bytemuck::cast_slice(&words));
    let output = ctx.storage_buffer("philox out", 16 * pairs.len() as u64)?;
    let bound = ctx.bind(&PHILOX_RAW, &[&input, &output])?;
    let mut enc = ctx.encoder("philox raw");
    let mut pass = crate::gpu::compute_pass(&mut enc, "philox raw");
    bound.record_3d(&mut pass, ((pairs.len() as u32).div_ceil(64), 1, 1));
    drop(pass);
    ctx.submit(enc);
    let bytes = ctx.read_bytes(&output, 0, 16 * pairs.len() as u64)?;
    let w: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
    Ok(w.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
}
