// Support kernels of the Newton-Schulz family (ALGORITHMS.md §5.1, §5.4); the products themselves are
// GEMM dispatches (shaders/gemm.wgsl). CPU twin: src/reference/newton_schulz.rs.
//
// frob_partial + frob_final: the Frobenius norm of each matrix of a batch (or of X - Y), in two
// passes with no float atomics, safe from overflow and underflow: squares are summed in three
// ranges (below), so a matrix of 1e-30s has its norm as one of 1e30s does.
// scale_copy: out[z] = x[z] * s[z], transposed or not, where s is 1 / (norm + eps) or 1.

struct NsParams {
    len: u32,        // elements per matrix
    batch: u32,
    chunks: u32,     // frob_partial workgroups per matrix
    use_y: u32,      // frob_partial: reduce x - y instead of x
    rows: u32,       // scale_copy: input rows, cols
    cols: u32,
    transpose: u32,
    use_norm: u32,   // scale_copy: multiply by 1 / (norms[z] + eps), else copy; cosh_partial: see cosh_scale
    eps: f32,
    gamma: f32,      // cosh_partial: the scale inside cosh
    _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> np: NsParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
// Per chunk: the sums of squares (normal, large, small, unused) of `sq3`.
@group(0) @binding(3) var<storage, read_write> partials: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> norms_out: array<f32>;
@group(0) @binding(5) var<storage, read> norms: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
// x and y as vec4s, for the partial passes where len % 4 == 0.
@group(0) @binding(7) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> y4: array<vec4<f32>>;

#import shared/reduce
#import shared/grid

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;                 // elements per frob_partial workgroup (16 per invocation)


// Workgroup (x, z, w)'s share of matrix z = wid.y: chunk x + w * (grid x) (chunks fold past a
// dimension's limit), in items of `width` elements (1, or 4 for vec4s): the matrix's first item and
// the chunk's [start, end) within it. `ok` is false past the last chunk.
struct Span {
    ok: bool,
    base: u32,
    start: u32,
    end: u32,
}

fn span(wid: vec3<u32>, nwg: vec3<u32>, width: u32) -> Span {
    let chunk = grid_chunk(wid, nwg);
    let items = np.len / width;
    let start = chunk * (CHUNK / width);
    return Span(chunk < np.chunks, wid.y * items, start, min(start + CHUNK / width, items));
}

// Sums of squares in three ranges (shared/reduce.wgsl's pair, with small entries added): |v| > 2^40
// adds (v * 2^-64)^2 to y, |v| < 2^-40 adds (v * 2^64)^2 to z, the rest v^2 to x. Each stays within
// f32 for 2^32 elements, and only denormal inputs lose bits. `norm3` recombines them.
const SMALL: f32 = 9.094947017729282e-13;  // 2^-40

fn sq3(v: f32) -> vec4<f32> {
    let a = abs(v);
    if (a > BIG) {
        let w = v * DOWN;
        return vec4<f32>(0.0, w * w, 0.0, 0.0);
    }
    if (a < SMALL) {
        let w = v * UP;
        return vec4<f32>(0.0, 0.0, w * w, 0.0);
    }
    return vec4<f32>(v * v, 0.0, 0.0, 0.0);
}

fn sq3_4(v: vec4<f32>) -> vec4<f32> {
    return sq3(v.x) + sq3(v.y) + sq3(v.z) + sq3(v.w);
}

// sqrt of the three sums: the largest range present decides the scale, the range below it is added
// where it can matter (small entries beside large ones cannot). A NaN entry lands in x (its
// comparisons are false), which every branch adds: in the last one x is 0 unless NaN. (Chains of
// scale factors are kept short: a compiler may fold UP * UP * UP * UP into +inf, and 0 * inf = NaN.)
fn norm3(q: vec4<f32>) -> f32 {
    if (q.y > 0.0) { return UP * sqrt(q.y + (q.x * DOWN) * DOWN); }
    if (q.x > 0.0) { return sqrt(q.x + (q.z * DOWN) * DOWN); }
    return DOWN * sqrt(q.z) + q.x;
}

var<workgroup> red3: array<vec4<f32>, WG>;

// The sum of red3[0..256] to invocation 0 (as shared/reduce.wgsl's workgroup_sum: two barriers).
fn workgroup_sum3(lid: u32) -> vec4<f32> {
    workgroupBarrier();
    if (lid < 16u) {
        var s = vec4<f32>(0.0);
        for (var j = 0u; j < 16u; j = j + 1u) { s = s + red3[lid * 16u + j]; }
        red3[lid * 16u] = s;
    }
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    if (lid == 0u) {
        for (var j = 0u; j < 16u; j = j + 1u) { total = total + red3[j * 16u]; }
    }
    return total;
}

// The workgroup's sum of `acc` into its chunk's partial.
fn store_partial(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, acc: vec4<f32>) {
    red3[lid] = acc;
    let total = workgroup_sum3(lid);
    if (lid == 0u) { partials[wid.y * np.chunks + grid_chunk(wid, nwg)] = total; }
}

@compute @workgroup_size(256)
fn frob_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let sp = span(wid, nwg, 1u);
    if (!sp.ok) { return; }
    var acc = vec4<f32>(0.0);
    for (var i = sp.base + sp.start + lid; i < sp.base + sp.end; i = i + WG) {
        var v = x[i];
        if (np.use_y != 0u) { v = v - y[i]; }
        acc = acc + sq3(v);
    }
    store_partial(wid, nwg, lid, acc);
}

// AuON's scale inside cosh for matrix z: gamma / (norms[z] + eps) with norms[z] = ||v||_F, or gamma
// itself where v is normalised already (np.use_norm = 0: the paper's Hybrid-AuON).
fn cosh_scale(z: u32) -> f32 {
    if (np.use_norm != 0u) { return np.gamma / (norms[z] + np.eps); }
    return np.gamma;
}

// AuON's (5.5.2) / (5.5.8): partial sums of cosh(s * v)^2 with s = cosh_scale(z). |s * v| <= gamma
// (|v| <= ||v||_F), so cosh^2 stays small and the plain sum (first component) suffices; frob_final
// then gives sqrt(sum).
@compute @workgroup_size(256)
fn cosh_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let sp = span(wid, nwg, 1u);
    if (!sp.ok) { return; }
    let s = cosh_scale(wid.y);
    var acc = vec4<f32>(0.0);
    for (var i = sp.base + sp.start + lid; i < sp.base + sp.end; i = i + WG) {
        let ch = cosh(s * x[i]);
        acc.x = acc.x + ch * ch;
    }
    store_partial(wid, nwg, lid, acc);
}

@compute @workgroup_size(256)
fn frob_final(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wid.x;
    var acc = vec4<f32>(0.0);
    for (var j = lid; j < np.chunks; j = j + WG) { acc = acc + partials[z * np.chunks + j]; }
    red3[lid] = acc;
    let q = workgroup_sum3(lid);
    if (lid == 0u) { norms_out[z] = norm3(q); }
}

@compute @workgroup_size(256)
fn scale_copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    let z = wid.z;
    if (i >= np.len) { return; }
    var v = x[z * np.len + i];
    if (np.use_norm != 0u) { v = v / (norms[z] + np.eps); }
    var o = i;
    if (np.transpose != 0u) {
        let r = i / np.cols;
        let c = i % np.cols;
        o = c * np.rows + r;
    }
    out[z * np.len + o] = v;
}

// frob_partial over vec4s (len % 4 == 0): chunks of 1024 vec4s, the same 4096 elements.
@compute @workgroup_size(256)
fn frob_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let sp = span(wid, nwg, 4u);
    if (!sp.ok) { return; }
    var acc = vec4<f32>(0.0);
    for (var i = sp.base + sp.start + lid; i < sp.base + sp.end; i = i + WG) {
        var v = x4[i];
        if (np.use_y != 0u) { v = v - y4[i]; }
        acc = acc + sq3_4(v);
    }
    store_partial(wid, nwg, lid, acc);
}

// cosh_partial over vec4s (len % 4 == 0).
@compute @workgroup_size(256)
fn cosh_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let sp = span(wid, nwg, 4u);
    if (!sp.ok) { return; }
    let s = cosh_scale(wid.y);
    var acc = vec4<f32>(0.0);
    for (var i = sp.base + sp.start + lid; i < sp.base + sp.end; i = i + WG) {
        let ch = cosh(s * x4[i]);
        acc.x = acc.x + ch.x * ch.x + ch.y * ch.y + ch.z * ch.z + ch.w * ch.w;
    }
    store_partial(wid, nwg, lid, acc);
}
