//! `shaders/gemm.wgsl`: C = α·op(A)·op(B) + β·C for op ∈ {N, T}, any m, n, k, batched; and
//! `shaders/fma_peak.wgsl`, the arithmetic baseline of the GEMM benchmarks. CPU twin:
//! `reference::gemm`.

use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// The GEMM kernel.
pub const GEMM_F32: KernelSpec =
    KernelSpec { module: "gemm", entry: "gemm_f32", bindings: &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, R)] };
/// Sums split-K partial products and applies the epilogue.
pub const GEMM_SPLITK_REDUCE: KernelSpec =
    KernelSpec { module: "gemm", entry: "gemm_splitk_reduce", bindings: &[(0, U), (1, R), (3, W), (4, R), (5, R)] };
/// The large-tile GEMM kernel for GPUs (128×128 tiles, 256 invocations).
pub const GEMM_F32_128: KernelSpec =
    KernelSpec { module: "gemm", entry: "gemm_f32_128", bindings: &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, R)] };
/// [`GEMM_F32_128`] loading the next k slice into registers while it multiplies the current one.
pub const GEMM_F32_128_PREFETCH: KernelSpec = KernelSpec {
    module: "gemm",
    entry: "gemm_f32_128_prefetch",
    bindings: &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, R)],
};
/// The CPU-adapter GEMM (64×32 tiles from packed panels, 8-lane subgroup broadcasts) into a padded
/// scratch matrix, or straight into C when C has that shape and its addend, if any, is a separate D.
pub const GEMM_PANEL: KernelSpec = KernelSpec { module: "gemm_panel", entry: "gemm_panel", bindings: PANEL_BINDINGS };
/// [`GEMM_PANEL`] reading a transposed B (stored n×k) in place, transposing 4×4 blocks in registers.
pub const GEMM_PANEL_BT: KernelSpec =
    KernelSpec { module: "gemm_panel", entry: "gemm_panel_bt", bindings: PANEL_BINDINGS };
/// [`GEMM_PANEL`] for a symmetric product written straight into C: tiles above the diagonal also
/// store their transposes.
pub const GEMM_PANEL_SYM: KernelSpec =
    KernelSpec { module: "gemm_panel", entry: "gemm_panel_sym", bindings: PANEL_BINDINGS };
/// [`GEMM_PANEL_BT`] and [`GEMM_PANEL_SYM`] together.
pub const GEMM_PANEL_BT_SYM: KernelSpec =
    KernelSpec { module: "gemm_panel", entry: "gemm_panel_bt_sym", bindings: PANEL_BINDINGS };
/// The bindings of the panel entry points: uniform, A, B, the output (C or the raw scratch) as
/// vec4s, norms, D, and the output again as f32s (a symmetric product's transposed stores).
const PANEL_BINDINGS: &[(u32, Binding)] = &[(0, U), (6, R), (7, R), (8, W), (5, R), (13, R), (3, W)];
/// The panel kernel's epilogue pass: C = α·product + β·D from the scratch matrix.
pub const GEMM_PANEL_FINISH: KernelSpec = KernelSpec {
    module: "gemm_panel",
    entry: "panel_finish",
    bindings: &[(0, U), (3, W), (4, R), (5, R), (9, R), (12, W), (13, R)],
};
/// Direct output of a symmetric product of two different matrices: copies each 64×64 diagonal
/// block's upper triangle over its lower one (which the product computed from other products).
pub const GEMM_PANEL_DIAG_MIRROR: KernelSpec =
    KernelSpec { module: "gemm_panel", entry: "panel_diag_mirror", bindings: &[(0, U), (12, W)] };
/// Packs op(A) into the panel kernel's 64-row panels.
pub const GEMM_PACK_A: KernelSpec =
    KernelSpec { module: "gemm_panel", entry: "pack_a", bindings: &[(0, U), (1, R), (8, W), (10, R)] };
/// Packs op(B) into the panel kernel's 32-column panels.
pub const GEMM_PACK_B: KernelSpec =
    KernelSpec { module: "gemm_panel", entry: "pack_b", bindings: &[(0, U), (2, R), (8, W), (11, R)] };
/// The FMA-throughput kernel.
pub const FMA_PEAK: KernelSpec = KernelSpec { module: "fma_peak", entry: "fma_peak", bindings: &[(0, U), (1, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[
    GEMM_F32,
    GEMM_F32_128,
    GEMM_F32_128_PREFETCH,
    GEMM_SPLITK_REDUCE,
    GEMM_PANEL,
    GEMM_PANEL_BT,
    GEMM_PANEL_SYM,
    GEMM_PANEL_BT_SYM,
    GEMM_PANEL_FINISH,
    GEMM_PANEL_DIAG_MIRROR,
    GEMM_PACK_A,
    GEMM_PACK_B,
    FMA_PEAK,
];

/// Output tile edge of one workgroup of `gemm_f32` (keep in sync with `TILE` in the shader).
pub const TILE: u32 = 64;
/// Output tile edge of one workgroup of `gemm_f32_128` (`TILE_L` in the shader).
pub const TILE_LARGE: u32 = 128;
/// Rows of a `gemm_panel` tile (`PM` in the shader).
pub const PANEL_ROWS: u32 = 64;
/// Columns of a `gemm_panel` tile (`PN` in the shader).
pub const PANEL_COLS: u32 = 32;
/// The subgroup width `gemm_panel` is written for.
pub const PANEL_LANES: u32 = 8;
/// The least m·n·k·batch for which [`GemmKernel::Auto`] picks the panel kernel on a CPU adapter: below
/// it the panel kernel's extra dispatches cost more than its speed saves (lavapipe, NS5 on one matrix:
/// at n = 64 and 128 the 64×64 kernel was 1.6–2× faster, at n = 256 the panel kernel 1.7×).
pub const PANEL_MIN_WORK: usize = 1 << 23;
/// The largest k for which the panel kernel reads an aligned row-major operand in place instead of
/// packing it. Measured on lavapipe: NS5's Gram product of a 768×3,072 X took 74–81 ms with X and Xᵀ
/// packed and 49–56 ms read in place (two runs each); a square n = 2,048 product was within this
/// machine's noise either way. (It was 1,024 while the transposed operand could not be read in place.)
pub const PANEL_IN_PLACE_K: usize = 4096;
/// Whether the panel kernel packs a B stored k×n (not transposed) that `rows` rows of op(A) multiply
/// (m, or m·batch when the batch shares B) instead of reading it in place. In place, each 32-column
/// panel takes 128 bytes from each of k rows n·4 bytes apart; once B outgrows the caches those
/// scattered lines cost 15–25% of the product, more than a packing pass (~2.7 ms per 2^20 floats)
/// wherever the product is long enough. So: B of at least 2^20 floats (4 MB) and at least 2^30
/// multiply-adds. Measured on lavapipe (2-core EPYC, 32 MB L3), in place → packed, pack included:
/// 2,048³ 475 → 360 ms (the gemm bench, products back to back: 463 → 329–345), 1,536³ 195 → 145, NS5's B·X products 768×768 · 768×3,072 92 → 80 and
/// 1,024×1,024 · 1,024×4,096 240 → 185, 256×256 · 256×16,384 65 → 60; 1,024³ 43 or 54 (one or the
/// other per process: the rows' physical pages decide) → 45–47; below the bounds in place won or
/// tied (512³ 5.2 against 6.0 ms, 640³ 9.9 against 11.5, 768³ even, 256×256 · 256×4,096 10.8 against
/// 13–16, 384×1,024 · 1,024×2,048 even). A B stored n×k, read in place by `gemm_panel_bt` along its
/// rows, keeps its lead at every size (2,048³ 320 against 360 ms packed; NS5's Gram 1,024×4,096 76
/// against 108) and is never packed for size.
pub fn pack_b_kn(rows: usize, k: usize, n: usize) -> bool {
    let (rows, k, n) = (rows as u64, k as u64, n as u64);
    k * n >= 1 << 20 && rows * k * n >= 1 << 30
}

/// Loop iterations per invocation of the tiled kernels for a given k: 18 per 16-deep k tile (the
/// tile loop and its 16 steps; the loads' fixed loops are unrolled), measured on llvmpipe, whose
/// loop budget ran out at k = 58,255 (65,535 · 16/18).
fn tile_loop_iterations(k: usize) -> u64 {
    k.div_ceil(16) as u64 * 18
}

/// The longest k that the panel kernel (k/4 iterations of its k loop) and the tiled kernels
/// ([`tile_loop_iterations`]) run in one dispatch under a loop budget of `limit` iterations per
/// invocation, each with half the budget to spare.
fn loop_k_bounds(limit: u64) -> (usize, usize) {
    let half = usize::try_from(limit / 2).unwrap_or(usize::MAX);
    (half.saturating_mul(4).max(4), (half / 18).saturating_mul(16).max(16))
}

/// Whether the adapter runs the panel kernel (8-lane subgroups).
fn panel_possible(ctx: &Context) -> bool {
    ctx.info().subgroup_size == Some(PANEL_LANES)
}

/// Whether the panel kernel can run `desc` on `ctx`: the adapter runs it and its packed operands
/// fit one binding each.
fn panel_fits(ctx: &Context, desc: &GemmDesc) -> bool {
    panel_possible(ctx) && desc.packed_bytes().iter().all(|&b| b <= ctx.max_binding_bytes())
}

/// Which GEMM kernel runs a problem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmKernel {
    /// [`GemmKernel::Tile128`] on GPUs when the problem has at least [`LARGE_TILE_MIN_WORKGROUPS`]
    /// of its tiles (enough to fill a large GPU), else [`GemmKernel::Tile64`]. CPU adapters (lavapipe)
    /// get [`GemmKernel::Panel`] where it can run and pays (8-lane subgroups, no split-K asked for,
    /// packed operands within one binding, at least [`PANEL_MIN_WORK`]), else `Tile64`.
    #[default]
    Auto,
    /// 64×64 output tiles, 8×8 invocations of 8×8 outputs each (`gemm_f32`).
    Tile64,
    /// 128×128 output tiles, 16×16 invocations of 8×8 outputs each, loads coalesced for every
    /// transpose combination (`gemm_f32_128`).
    Tile128,
    /// [`GemmKernel::Tile128`] with the next k slice's global loads issued before the current
    /// slice's multiply, hiding their latency (`gemm_f32_128_prefetch`; 16 more registers per
    /// invocation). Not chosen by `Auto` until a GPU run shows it faster: the gemm bench times both.
    Tile128Prefetch,
    /// For CPU drivers that run a subgroup as one SIMD register (lavapipe): one 8-invocation
    /// workgroup computes a 64×32 tile with vec4 loads and subgroup broadcasts (`gemm_panel`, or
    /// `gemm_panel_bt` for a B stored n×k). A, B stored k×n and B stored n×k are read in place when
    /// k % 4 == 0 and k ≤ [`PANEL_IN_PLACE_K`] (B k×n also needs n % 4 == 0); other operands are
    /// packed into zero-padded panels first. C of whole tiles (m % 64 == n % 32 == 0) with no
    /// addend or a separate one is written by the product kernel (a symmetric one's tiles above the
    /// diagonal also store their transposes; of two different matrices, a small pass then mirrors the
    /// diagonal blocks); anything else goes through a raw scratch matrix and an epilogue pass. One to
    /// four dispatches. Needs subgroups of exactly [`PANEL_LANES`]; never splits k.
    Panel,
}

/// The most k slices a split-K GEMM is cut into (an explicit `split_k` above it is capped): keeps the
/// scratch of partial products (slices × m × n floats) and the dispatch's z dimension bounded.
pub const MAX_SPLIT_K: usize = 64;

/// The fewest 128×128 tiles (over the batch) for which [`GemmKernel::Auto`] picks the large tile.
pub const LARGE_TILE_MIN_WORKGROUPS: usize = 128;

impl GemmKernel {
    /// The kernel `self` resolves to for `desc` on `ctx`'s adapter.
    pub fn resolve(self, ctx: &Context, desc: &GemmDesc) -> GemmKernel {
        match self {
            GemmKernel::Auto if ctx.info().is_cpu() => {
                let work = desc.m * desc.n * desc.k * desc.batch;
                if panel_fits(ctx, desc) && desc.split_k <= 1 && work >= PANEL_MIN_WORK {
                    GemmKernel::Panel
                } else {
                    GemmKernel::Tile64
                }
            }
            GemmKernel::Auto => {
                let tiles = desc.m.div_ceil(TILE_LARGE as usize) * desc.n.div_ceil(TILE_LARGE as usize);
                let tiles = if desc.symmetric { tiles.div_ceil(2) } else { tiles } * desc.batch;
                let fits = crate::gpu::check_kernel_limits(&GEMM_F32_128, &ctx.info().limits).is_ok();
                if fits && !ctx.info().is_cpu() && tiles >= LARGE_TILE_MIN_WORKGROUPS {
                    GemmKernel::Tile128
                } else {
                    GemmKernel::Tile64
                }
            }
            chosen => chosen,
        }
    }

    /// The 128×128-tile kernels.
    pub fn is_large(self) -> bool {
        matches!(self, GemmKernel::Tile128 | GemmKernel::Tile128Prefetch)
    }
}

/// Uniform of every GEMM kernel. Keep in sync with `struct GemmParams` in
/// `shaders/shared/gemm_common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct GemmParams {
    /// Rows of op(A) and C.
    pub m: u32,
    /// Columns of op(B) and C.
    pub n: u32,
    /// Inner dimension.
    pub k: u32,
    /// Matrices in the batch.
    pub batch: u32,
    /// Row stride of stored A.
    pub lda: u32,
    /// Row stride of stored B.
    pub ldb: u32,
    /// Row stride of C.
    pub ldc: u32,
    /// 1 when A is stored transposed (k×m).
    pub trans_a: u32,
    /// Elements between consecutive A matrices (0 broadcasts one A).
    pub stride_a: u32,
    /// Elements between consecutive B matrices (0 broadcasts one B).
    pub stride_b: u32,
    /// Elements between consecutive C matrices.
    pub stride_c: u32,
    /// 1 when B is stored transposed (n×k).
    pub trans_b: u32,
    /// α.
    pub alpha: f32,
    /// β (0: the addend is not read).
    pub beta: f32,
    /// 0: the addend is C; 1: the separate `d` binding.
    pub d_mode: u32,
    /// Elements between consecutive D matrices.
    pub stride_d: u32,
    /// 1: compute the upper triangle of tiles and mirror it (C symmetric).
    pub symmetric: u32,
    /// Split-K partial products: the whole inner dimension (0: off; then `k` is one slice's).
    pub k_total: u32,
    /// Powers of s = 1/(norms\[z\] + eps) on α (bits 0–3) and β (bits 4–7); see [`NormScale`].
    pub scale_pows: u32,
    /// The ε of s.
    pub eps: f32,
    /// The panel kernel's A addressing in vec4s: row stride, k-group step, 64-row panel stride,
    /// matrix stride (packed, or the stored A read in place).
    pub a_addr: [u32; 4],
    /// The panel kernel's B addressing in vec4s: stored-row stride (between rows of k, or for a B
    /// stored n×k between columns), 32-column panel stride, matrix stride; then 1 when the panel
    /// kernel writes α·product (+ β·D) straight into C (`direct_out`).
    pub b_addr: [u32; 4],
    /// The panel kernel's walk through B in vec4s: a lane's offset, the step per k group; padding.
    pub b_walk: [u32; 4],
}
const _: () = assert!(std::mem::size_of::<GemmParams>() == 128);

/// A GEMM problem: C\[z\] = α·op(A\[z\])·op(B\[z\]) + β·C\[z\] for z < batch, all matrices dense row-major.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmDesc {
    /// Rows of op(A) and C.
    pub m: usize,
    /// Columns of op(B) and C.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Number of matrices.
    pub batch: usize,
    /// A is stored k×m.
    pub trans_a: bool,
    /// B is stored n×k.
    pub trans_b: bool,
    /// α.
    pub alpha: f32,
    /// β.
    pub beta: f32,
    /// The result is symmetric (X·Xᵀ, A·A with A symmetric, or a product of two commuting symmetric
    /// matrices, each with a symmetric addend): compute half, mirror it (bitwise symmetric result).
    /// The caller vouches for the symmetry; m must equal n.
    pub symmetric: bool,
    /// The kernel (default: chosen per adapter and size). On an adapter with a loop budget
    /// ([`crate::gpu::AdapterSummary::loop_limit`]) a k too long for the kernel asked for may run on
    /// another one (see `GemmPlan::new`).
    pub kernel: GemmKernel,
    /// Split-K: 0 is automatic (see [`GemmDesc::split_k_for`]), 1 never splits (except where an
    /// adapter's loop budget needs it), s > 1 splits the inner dimension into s slices (at most
    /// [`MAX_SPLIT_K`]) whose partial products a second dispatch sums (single matrices).
    pub split_k: usize,
}

impl GemmDesc {
    /// The Gram product C = X·Xᵀ of an m×k matrix X (half the FLOPs of the full product).
    pub fn gram(m: usize, k: usize) -> Self {
        GemmDesc { trans_b: true, symmetric: true, ..GemmDesc::new(m, m, k) }
    }

    /// C = op(A)·op(B) for one matrix.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        GemmDesc {
            m,
            n,
            k,
            batch: 1,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            symmetric: false,
            kernel: GemmKernel::Auto,
            split_k: 0,
        }
    }

    /// The number of k slices this problem runs in on `ctx` (1: no split).
    ///
    /// Why: a single matrix whose output has too few tiles to fill a GPU while k is long leaves most
    /// of it idle. NS5's Gram product X·Xᵀ of a 768×3,072 X is 78 workgroups each walking k = 3,072;
    /// on an H200 (132 SMs) NS5 there took 6.5 ms against 4.2 ms for its 15 GEMMs' worth of FLOPs.
    /// The automatic rule: enough slices for ~2 workgroups of the large tile (8 of the small) per SM
    /// of a 132-SM GPU, each slice at least 128 deep, at most 16; never on CPU adapters, where the
    /// extra pass only costs. Until it has been timed on a GPU it is opt-in: the automatic choice
    /// (`split_k` = 0) splits only when `GPUOPT_GEMM_SPLIT_K=auto` is set; `split_k` > 1 asks for a
    /// split explicitly (`gpuopt bench --suite gemm` times both on GPUs).
    /// A symmetric product is split only when it is a Gram product (A and B the same buffer, one of
    /// them transposed), whose slices are symmetric too.
    pub fn split_k_for(&self, ctx: &Context, gram: bool) -> usize {
        if self.batch != 1 || (self.symmetric && !gram) || self.m == 0 || self.n == 0 {
            return 1;
        }
        let slices = match self.split_k {
            0 => {
                if ctx.info().is_cpu() || !GemmDesc::split_k_auto() {
                    return 1;
                }
                let large = self.kernel.resolve(ctx, self).is_large();
                let tile = if large { TILE_LARGE } else { TILE } as usize;
                let mut tiles = self.m.div_ceil(tile) * self.n.div_ceil(tile);
                if self.symmetric {
                    tiles = tiles.div_ceil(2) + self.m.div_ceil(tile).div_ceil(2);
                }
                // Workgroups that fill a large GPU: 2 per SM of the large tile, 8 of the small one.
                let fill: usize = if large { 264 } else { 1056 };
                fill.div_ceil(tiles).min(self.k / 128).min(16)
            }
            s => s,
        };
        slices.clamp(1, self.k.clamp(1, MAX_SPLIT_K))
    }

    /// `GPUOPT_GEMM_SPLIT_K=auto` turns the automatic split-K rule on (see [`GemmDesc::split_k_for`]).
    fn split_k_auto() -> bool {
        std::env::var("GPUOPT_GEMM_SPLIT_K").is_ok_and(|v| v == "auto")
    }

    /// Bytes of the panel kernel's scratch over the whole batch: packed op(A), packed op(B) and the
    /// raw product (rows padded to 64, columns to 32, k to 4; an operand shared by the batch is
    /// packed once, so this is an upper bound).
    pub fn packed_bytes(&self) -> [u64; 3] {
        let (k4, rows, cols) = self.panel_shape();
        let [k4, rows, cols, batch] = [k4, rows, cols, self.batch].map(|v| v as u64);
        [batch * rows * k4 * 16, batch * cols * k4 * 16, batch * rows * cols * 4]
    }

    /// The panel kernel's padded extents: k groups of 4, rows padded to 64, columns to 32.
    fn panel_shape(&self) -> (usize, usize, usize) {
        let k4 = self.k.div_ceil(4);
        (k4, self.m.next_multiple_of(PANEL_ROWS as usize), self.n.next_multiple_of(PANEL_COLS as usize))
    }

    /// FLOPs (a multiply-add counts 2).
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.batch) as f64
    }

    fn params(&self, a_len: usize, b_len: usize) -> GemmParams {
        let (m, n, k) = (self.m as u32, self.n as u32, self.k as u32);
        let a_one = self.m * self.k;
        let b_one = self.k * self.n;
        GemmParams {
            m,
            n,
            k,
            batch: self.batch as u32,
            lda: if self.trans_a { m } else { k },
            ldb: if self.trans_b { k } else { n },
            ldc: n,
            trans_a: self.trans_a as u32,
            stride_a: if a_len == a_one && self.batch > 1 { 0 } else { a_one as u32 },
            stride_b: if b_len == b_one && self.batch > 1 { 0 } else { b_one as u32 },
            stride_c: (self.m * self.n) as u32,
            trans_b: self.trans_b as u32,
            alpha: self.alpha,
            beta: self.beta,
            d_mode: 0,
            stride_d: 0,
            symmetric: self.symmetric as u32,
            k_total: 0,
            scale_pows: 0,
            eps: 0.0,
            a_addr: [0; 4],
            b_addr: [0; 4],
            b_walk: [0; 4],
        }
    }

    /// Checks the tensors' element counts: A and B hold `batch` matrices or one (broadcast), C `batch`.
    pub fn check(&self, a: usize, b: usize, c: usize) -> Result<()> {
        let ok = |len: usize, one: usize| len == one * self.batch || (len == one && self.batch >= 1);
        let shape_err = |what: &str, one: usize, got: usize| Error::Shape {
            what: format!("gemm {what} (m={}, n={}, k={}, batch={})", self.m, self.n, self.k, self.batch),
            expected: vec![self.batch, one],
            got: vec![got],
        };
        if self.batch == 0 || self.batch > 65_535 {
            return Err(Error::Invalid(format!("gemm batch {} must be in 1..=65535", self.batch)));
        }
        if !ok(a, self.m * self.k) {
            return Err(shape_err("A", self.m * self.k, a));
        }
        if !ok(b, self.k * self.n) {
            return Err(shape_err("B", self.k * self.n, b));
        }
        if c != self.m * self.n * self.batch {
            return Err(shape_err("C", self.m * self.n, c));
        }
        if self.symmetric && self.m != self.n {
            return Err(Error::Invalid(format!("a symmetric gemm needs m = n, got {}x{}", self.m, self.n)));
        }
        if !self.alpha.is_finite() || !self.beta.is_finite() {
            return Err(Error::Invalid("gemm alpha and beta must be finite".into()));
        }
        Ok(())
    }
}

/// Per-matrix scaling of a GEMM's two terms by s_z = 1/(norms\[z\] + eps): C = α·s^p·op(A)·op(B) +
/// β·s^q·D. Newton–Schulz uses it to fuse its normalisation X = G/(‖G‖ + eps) into its first two
/// products instead of a pass that writes the normalised copy.
#[derive(Clone, Copy, Debug)]
pub struct NormScale<'a> {
    /// One value per matrix of the batch.
    pub norms: &'a Tensor,
    /// The ε of s.
    pub eps: f32,
    /// p, the power of s on the product: 0, 1 or 2.
    pub product_pow: u32,
    /// q, the power of s on the addend: 0 or 1.
    pub addend_pow: u32,
}

/// A GEMM bound to its tensors, ready to record (build once, record many times).
pub struct GemmPlan {
    bound: Option<BoundKernel>,
    grid: (u32, u32, u32),
    _uniform: wgpu::Buffer,
    desc: GemmDesc,
    /// Split-K: the reduction of the partial products.
    reduce: Option<Box<SplitReduce>>,
    /// The panel kernel's dispatches, in order (packs where needed, the product, the epilogue pass
    /// where needed), and its scratch.
    steps: Vec<(BoundKernel, (u32, u32, u32))>,
    _scratch: Vec<wgpu::Buffer>,
}

/// The second dispatch of a split-K GEMM: its kernel, grid, and uniform and scratch buffers.
struct SplitReduce {
    bound: BoundKernel,
    grid: (u32, u32, u32),
    buffers: [wgpu::Buffer; 2],
}

impl GemmPlan {
    /// Validates shapes and binds `c ← α·op(a)·op(b) + β·c`.
    pub fn new(ctx: &Context, desc: GemmDesc, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Self> {
        Self::build(ctx, desc, a, b, c, None, None)
    }

    /// Validates shapes and binds `c ← α·op(a)·op(b) + β·d` with `d` of C's shape (one matrix,
    /// broadcast, or `batch`), a fused epilogue in the same dispatch.
    pub fn with_addend(ctx: &Context, desc: GemmDesc, a: &Tensor, b: &Tensor, c: &Tensor, d: &Tensor) -> Result<Self> {
        Self::build(ctx, desc, a, b, c, Some(d), None)
    }

    /// As [`GemmPlan::new`] / [`GemmPlan::with_addend`] with both terms scaled per matrix
    /// ([`NormScale`]).
    pub fn scaled(
        ctx: &Context,
        desc: GemmDesc,
        (a, b, c): (&Tensor, &Tensor, &Tensor),
        d: Option<&Tensor>,
        scale: NormScale,
    ) -> Result<Self> {
        Self::build(ctx, desc, a, b, c, d, Some(scale))
    }

    fn build(
        ctx: &Context,
        desc: GemmDesc,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        d: Option<&Tensor>,
        scale: Option<NormScale>,
    ) -> Result<Self> {
        desc.check(a.len(), b.len(), c.len())?;
        let mut params = desc.params(a.len(), b.len());
        if let Some(sc) = &scale {
            if sc.product_pow > 2 || sc.addend_pow > 1 || !sc.eps.is_finite() || sc.eps < 0.0 {
                return Err(Error::Invalid(format!(
                    "gemm scale: powers {} and {} (at most 2 and 1), eps {} (finite, >= 0)",
                    sc.product_pow, sc.addend_pow, sc.eps
                )));
            }
            if sc.norms.len() < desc.batch {
                return Err(Error::Shape {
                    what: "gemm scale norms".into(),
                    expected: vec![desc.batch],
                    got: sc.norms.shape().to_vec(),
                });
            }
            params.scale_pows = sc.product_pow | (sc.addend_pow << 4);
            params.eps = sc.eps;
        }
        let one = desc.m * desc.n;
        // D given as C itself is the plain β·C epilogue (binding C for writing and again for reading
        // in one dispatch is a usage conflict).
        let d = d.filter(|d| d.buffer() != c.buffer());
        if let Some(d) = d {
            if d.len() != one && d.len() != one * desc.batch {
                return Err(Error::Shape {
                    what: "gemm addend D".into(),
                    expected: vec![desc.batch, desc.m, desc.n],
                    got: d.shape().to_vec(),
                });
            }
            params.d_mode = 1;
            params.stride_d = if d.len() == one && desc.batch > 1 { 0 } else { one as u32 };
        }
        // Without an addend or a scale the `d` and `norms` bindings still need a buffer; it is never
        // read (d_mode = 0, scale_pows = 0).
        let d_buf = d.map_or(ctx.unused_binding(), Tensor::buffer);
        let n_buf = scale.map_or(ctx.unused_binding(), |sc| sc.norms.buffer());
        let mut kernel = desc.kernel.resolve(ctx, &desc);
        let gram = a.buffer() == b.buffer() && desc.trans_a != desc.trans_b;
        // An adapter that stops long shader loops (llvmpipe, AdapterSummary::loop_limit): a k past
        // the panel kernel's bound goes to the tiled kernel, which splits k into slices within its
        // own (split-K: single matrices, symmetric ones only as Gram products); what cannot split
        // is refused rather than summed short.
        let mut min_slices = 1;
        if let Some(limit) = ctx.info().loop_limit {
            let (panel_k, tile_k) = loop_k_bounds(limit);
            if kernel == GemmKernel::Panel && desc.k > panel_k {
                kernel = GemmKernel::Tile64;
            }
            if kernel != GemmKernel::Panel && desc.k > tile_k {
                let slices = desc.k.div_ceil(tile_k);
                let splits = desc.batch == 1 && (gram || !desc.symmetric) && slices <= MAX_SPLIT_K;
                // The tiled kernel's count is exact (tile_loop_iterations): within the whole budget
                // it may run unsplit.
                let tile_fits = tile_loop_iterations(desc.k) <= limit;
                let panel = desc.k <= panel_k && panel_fits(ctx, &desc);
                if splits {
                    min_slices = slices;
                } else if !tile_fits && panel {
                    // A batch (or a product that cannot split) within the panel kernel's bound.
                    kernel = GemmKernel::Panel;
                } else if !tile_fits {
                    let bound = if panel_possible(ctx) { panel_k } else { tile_k };
                    let what = format!(
                        "a GEMM with k = {} ({}; on this adapter k up to {bound} runs in one piece)",
                        desc.k,
                        if desc.batch != 1 {
                            "batched, so k cannot be split"
                        } else {
                            "a product k cannot be split in"
                        }
                    );
                    ctx.info().check_loop(tile_loop_iterations(desc.k), &what)?;
                }
            }
        }
        if kernel == GemmKernel::Panel {
            return Self::build_panel(ctx, desc, params, (a, b, c), d_buf, n_buf);
        }
        let (spec, tile) = match kernel {
            GemmKernel::Tile128 => (&GEMM_F32_128, TILE_LARGE),
            GemmKernel::Tile128Prefetch => (&GEMM_F32_128_PREFETCH, TILE_LARGE),
            _ => (&GEMM_F32, TILE),
        };
        // Slices of a multiple of 16 (the kernels' k step), so only the last one is ragged.
        let split = desc.split_k_for(ctx, gram).max(min_slices);
        let kc = desc.k.div_ceil(split).next_multiple_of(16).min(desc.k).max(1);
        let slices = desc.k.div_ceil(kc);
        let mut reduce = None;
        // Split-K: slice z of k is batch matrix z of a GEMM into scratch; the reduction applies α, β.
        let (out, batch) = if slices > 1 {
            let scratch = ctx.storage_buffer("gemm split-k partials", (slices * one * 4) as u64)?;
            let mut rp = params;
            rp.batch = slices as u32;
            let ru = ctx.uniform_buffer("gemm split-k reduce params", std::mem::size_of::<GemmParams>() as u64);
            ctx.queue().write_buffer(&ru, 0, bytemuck::bytes_of(&rp));
            let bound = ctx.bind(&GEMM_SPLITK_REDUCE, &[&ru, &scratch, c.buffer(), d_buf, n_buf])?;
            let (x, y) = ctx.grid((one as u32).div_ceil(crate::gpu::WORKGROUP_SIZE));
            params.k = kc as u32;
            params.k_total = desc.k as u32;
            params.stride_a = (if desc.trans_a { kc * desc.m } else { kc }) as u32;
            params.stride_b = (if desc.trans_b { kc } else { kc * desc.n }) as u32;
            params.stride_c = one as u32;
            params.alpha = 1.0;
            params.beta = 0.0;
            params.d_mode = 0;
            params.scale_pows = 0; // the reduction scales
            reduce = Some(Box::new(SplitReduce { bound, grid: (x, y, 1), buffers: [ru, scratch] }));
            (reduce.as_ref().map(|r| &r.buffers[1]), slices)
        } else {
            (None, desc.batch)
        };
        let uniform = ctx.uniform_buffer("gemm params", std::mem::size_of::<GemmParams>() as u64);
        ctx.queue().write_buffer(&uniform, 0, bytemuck::bytes_of(&params));
        let bound = if desc.m == 0 || desc.n == 0 {
            None
        } else {
            Some(ctx.bind(spec, &[&uniform, a.buffer(), b.buffer(), out.unwrap_or(c.buffer()), d_buf, n_buf])?)
        };
        let grid = ((desc.n as u32).div_ceil(tile), (desc.m as u32).div_ceil(tile), batch as u32);
        Ok(GemmPlan { bound, grid, _uniform: uniform, desc, reduce, steps: Vec::new(), _scratch: Vec::new() })
    }

    /// The panel kernel: pack op(A) and op(B) where they cannot be read in place (each once when the
    /// batch shares it), multiply, and apply the epilogue (with the mirror) where C is not written directly.
    fn build_panel(
        ctx: &Context,
        desc: GemmDesc,
        params: GemmParams,
        (a, b, c): (&Tensor, &Tensor, &Tensor),
        d_buf: &wgpu::Buffer,
        n_buf: &wgpu::Buffer,
    ) -> Result<Self> {
        if ctx.info().subgroup_size != Some(PANEL_LANES) {
            return Err(Error::Invalid(format!(
                "the panel GEMM kernel needs subgroups of {PANEL_LANES} lanes; {} has {:?}",
                ctx.info().name,
                ctx.info().subgroup_size
            )));
        }
        let (rows, cols) = (PANEL_ROWS as usize, PANEL_COLS as usize);
        let (k4, m_pad, n_pad) = desc.panel_shape();
        let count_a = if params.stride_a == 0 { 1 } else { desc.batch };
        let count_b = if params.stride_b == 0 { 1 } else { desc.batch };
        // With no partial k group, A stored m×k, B stored n×k, and B stored k×n with rows of whole
        // vec4s are read in place (up to PANEL_IN_PLACE_K); a transposed A, ragged rows, or a longer
        // k are packed first. vec4s per packed matrix:
        let per_a = m_pad * k4;
        let per_b = n_pad * k4;
        let in_place = desc.k.is_multiple_of(4) && desc.k <= PANEL_IN_PLACE_K;
        let direct_a = in_place && !desc.trans_a;
        // A transposed B (n×k) is read in place by gemm_panel_bt, 4 stored rows per lane; a B stored
        // k×n unless it is large ([`pack_b_kn`]).
        let direct_b = in_place
            && (desc.trans_b
                || (desc.n.is_multiple_of(4) && !pack_b_kn(desc.m * desc.batch / count_b.max(1), desc.k, desc.n)));
        let mut params = params;
        params.a_addr = if direct_a {
            let lda4 = params.lda / 4;
            [lda4, 1, PANEL_ROWS * lda4, params.stride_a / 4]
        } else {
            [1, PANEL_ROWS, (rows * k4) as u32, per_a as u32]
        };
        let ldb4 = params.ldb / 4;
        (params.b_addr, params.b_walk) = match (direct_b, desc.trans_b) {
            // Lane q: stored rows 4q .. 4q + 3 of the panel's 32, one vec4 of k each.
            (true, true) => ([ldb4, PANEL_COLS * ldb4, params.stride_b / 4, 0], [4 * ldb4, 1, 0, 0]),
            // Lane q: vec4 q of each of 4 consecutive rows of k.
            (true, false) => ([ldb4, PANEL_COLS / 4, params.stride_b / 4, 0], [1, 4 * ldb4, 0, 0]),
            (false, _) => ([PANEL_COLS / 4, (cols * k4) as u32, per_b as u32, 0], [1, PANEL_COLS, 0, 0]),
        };
        // C with the scratch's shape and no addend, or one that is not C itself (C is bound for
        // writing, so it cannot be bound again for reading): the product kernel writes C.
        let direct_out = (desc.beta == 0.0 || params.d_mode == 1) && m_pad == desc.m && n_pad == desc.n;
        // The tiles crossing the diagonal compute their lower elements themselves, which equal their
        // mirrors bit for bit only when both operands are one matrix (X·Xᵀ, A·A with A symmetric: the
        // same products summed in the same order). A symmetric product of two different matrices
        // (commuting ones, as the matrix roots use) then copies the diagonal blocks' upper halves.
        let one_operand = a.buffer() == b.buffer() && params.stride_a == params.stride_b;
        let diag_mirror = direct_out && desc.symmetric && !one_operand;
        params.b_addr[3] = direct_out as u32;
        let uniform = ctx.uniform_buffer("gemm params", std::mem::size_of::<GemmParams>() as u64);
        ctx.queue().write_buffer(&uniform, 0, bytemuck::bytes_of(&params));
        let scratch = |label: &str, packed: bool, vec4s: usize| {
            ctx.storage_buffer(label, if packed { vec4s as u64 * 16 } else { 16 })
        };
        let ap = scratch("gemm packed A", !direct_a, count_a * per_a)?;
        let bp = scratch("gemm packed B", !direct_b, count_b * per_b)?;
        let raw_bytes = if direct_out { 16 } else { desc.batch * m_pad * n_pad * 4 };
        let raw = ctx.storage_buffer("gemm raw product", raw_bytes as u64)?;
        // The passes' grids: x over 64-invocation workgroups, y over k groups or rows (the kernels loop
        // past the grid's height), z over the batch.
        let max_y = ctx.info().limits.max_compute_workgroups_per_dimension as usize;
        let pass_grid = |x: usize, y: usize, z: usize| ((x as u32).div_ceil(64), y.clamp(1, max_y) as u32, z as u32);
        let mut steps = Vec::new();
        if desc.m > 0 && desc.n > 0 {
            if desc.k > 0 {
                // One invocation per 4×4 block; the source bound twice (as f32s and as vec4s).
                let jobs = [
                    (&GEMM_PACK_A, a, &ap, m_pad, count_a, direct_a),
                    (&GEMM_PACK_B, b, &bp, n_pad, count_b, direct_b),
                ];
                for (spec, src, dst, extent, count, _) in jobs.into_iter().filter(|job| !job.5) {
                    let bound = ctx.bind(spec, &[&uniform, src.buffer(), dst, src.buffer()])?;
                    steps.push((bound, pass_grid(extent / 4, k4, count)));
                }
            }
            let (tiles_r, tiles_c) = (m_pad / rows, n_pad / cols);
            // Symmetric: pairs of row panels with the same number of upper tiles (see `panel`).
            let grid = if desc.symmetric {
                ((2 * tiles_c + 2 - 2 * tiles_r) as u32, tiles_r.div_ceil(2) as u32, desc.batch as u32)
            } else {
                (tiles_c as u32, tiles_r as u32, desc.batch as u32)
            };
            let a_in = if direct_a { a.buffer() } else { &ap };
            let b_in = if direct_b { b.buffer() } else { &bp };
            let out = if direct_out { c.buffer() } else { &raw };
            let spec = match (direct_b && desc.trans_b, direct_out && desc.symmetric) {
                (false, false) => &GEMM_PANEL,
                (true, false) => &GEMM_PANEL_BT,
                (false, true) => &GEMM_PANEL_SYM,
                (true, true) => &GEMM_PANEL_BT_SYM,
            };
            steps.push((ctx.bind(spec, &[&uniform, a_in, b_in, out, n_buf, d_buf, out])?, grid));
            let rows_grid = pass_grid(desc.n.div_ceil(4), desc.m, desc.batch);
            if !direct_out {
                // One invocation per 4 elements of a row; C and D bound twice (as f32s and as vec4s).
                let views = [&uniform, c.buffer(), d_buf, n_buf, &raw, c.buffer(), d_buf];
                steps.push((ctx.bind(&GEMM_PANEL_FINISH, &views)?, rows_grid));
            } else if diag_mirror {
                let grid = (tiles_r as u32, 1, desc.batch as u32);
                steps.push((ctx.bind(&GEMM_PANEL_DIAG_MIRROR, &[&uniform, c.buffer()])?, grid));
            }
        }
        Ok(GemmPlan {
            bound: None,
            grid: (0, 0, 0),
            _uniform: uniform,
            desc,
            reduce: None,
            steps,
            _scratch: vec![ap, bp, raw],
        })
    }

    /// The problem.
    pub fn desc(&self) -> &GemmDesc {
        &self.desc
    }

    /// Records the dispatch; returns the number of dispatches (0 for an empty C).
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) -> usize {
        let mut n = 0;
        for (kernel, grid) in &self.steps {
            n += kernel.record_3d(pass, *grid);
        }
        let Some(bound) = &self.bound else { return n };
        if self.grid.0 > 65_535 || self.grid.1 > 65_535 {
            // Checked in `new` through the tensor-size limits long before this could happen.
            log::error!("gemm grid {:?} exceeds 65,535", self.grid);
        }
        n += bound.record_3d(pass, self.grid);
        if let Some(r) = &self.reduce {
            n += r.bound.record_3d(pass, r.grid);
        }
        n
    }

    /// The number of k slices (1: no split-K).
    pub fn slices(&self) -> usize {
        if self.reduce.is_some() {
            self.grid.2 as usize
        } else {
            1
        }
    }
}

/// Runs one GEMM now (records, submits); convenience for tests and one-off products.
///
/// ```
/// use gpuopt::kernels::gemm::{gemm, GemmDesc};
/// # let ctx = gpuopt::Context::new()?;
/// let a = gpuopt::Tensor::from_slice(&ctx, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
/// let c = gpuopt::Tensor::zeros(&ctx, &[2, 2])?;
/// gemm(&ctx, GemmDesc { trans_b: true, ..GemmDesc::new(2, 2, 2) }, &a, &a, &c)?; // C = A·Aᵀ
/// assert_eq!(c.to_vec(&ctx)?, vec![5.0, 11.0, 11.0, 25.0]);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn gemm(ctx: &Context, desc: GemmDesc, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
    let plan = GemmPlan::new(ctx, desc, a, b, c)?;
    let mut enc = ctx.encoder("gemm");
    let mut pass = crate::gpu::compute_pass(&mut enc, "gemm");
    ctx.scoped("gemm", || plan.record(&mut pass))?;
    drop(pass);
    ctx.submit(enc);
    Ok(())
}

/// The FMA-throughput kernel: `invocations` invocations of `iters` iterations.
pub struct FmaPeak {
    bound: BoundKernel,
    workgroups: u32,
    _buffers: [wgpu::Buffer; 2],
    /// FLOPs per dispatch.
    pub flops: f64,
}

impl FmaPeak {
    /// Binds the kernel for `workgroups` × 256 invocations of `iters` steps (rounded up to a multiple
    /// of 4, the kernel's unrolling).
    pub fn new(ctx: &Context, workgroups: u32, iters: u32) -> Result<Self> {
        let iters = iters.next_multiple_of(4);
        let uniform = ctx.uniform_buffer("fma params", 16);
        ctx.queue().write_buffer(&uniform, 0, bytemuck::cast_slice(&[iters, 0u32, 0, 0]));
        let out = ctx.storage_buffer("fma out", 16 * 256 * workgroups as u64)?;
        let bound = ctx.bind(&FMA_PEAK, &[&uniform, &out])?;
        let flops = workgroups as f64 * 256.0 * iters as f64 * 8.0 * 4.0 * 2.0;
        Ok(FmaPeak { bound, workgroups, _buffers: [uniform, out], flops })
    }

    /// Records one dispatch.
    pub fn record(&self, ctx: &Context, pass: &mut wgpu::ComputePass<'_>) {
        self.bound.record(ctx, pass, self.workgroups);
    }
}
