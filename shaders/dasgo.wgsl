// DASGO, ASGO's diagonal variant (ALGORITHMS.md §5.7; infinity-stars/ASGO optimizers/dasgo.py). For a
// parameter viewed as rows x cols:
//   d_j <- lerp(d_j, sum_i G_ij^2, 1 - beta2)       (one statistic per column, d = 0 at start)
//   M   <- lerp(M, G, 1 - momentum)
//   U_ij = M_ij * r_j,  r_j = 1 / sqrt(d_j + eps)   (the reference's M * (d + eps)^-0.5)
//   p   <- (1 - lr*wd) * p - lr * 0.2*sqrt(rows*cols) * U / (||U||_F + 1e-16)      (update RMS 0.2)
// Five passes: column sums over bands of rows (only when there is more than one band), column
// statistics (and r), momentum with the partial sums of ||U||^2, the norm, the update. The bands make
// bands * cols invocations share the column sums, so a matrix with few columns still fills a large
// GPU (one invocation per column would give a 1024 x 1024 matrix 1,024 threads). The last two element passes walk 4096-element chunks, each invocation every 256th element,
// so its column advances by 256 mod cols (`wrap`) with one compare instead of a division per element
// (integer division is scalar on CPU drivers: it cost lavapipe more than the arithmetic).
// CPU twin: src/reference/dasgo.rs.

struct DasgoParams {
    rows: u32,
    cols: u32,
    chunks: u32,
    wrap: u32,    // 256 mod cols
    omb: f32,     // 1 - beta2
    omm: f32,     // 1 - momentum
    eps: f32,
    decay: f32,   // 1 - lr * weight_decay
    step: f32,    // lr * 0.2 * sqrt(rows * cols)
    bands: u32,   // bands of rows the column sums are split into
    band_rows: u32, // rows per band (the last may hold fewer)
    _p0: u32,
}

@group(0) @binding(0) var<uniform> dp: DasgoParams;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> d: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec2<f32>>;
// [||U||_F, unused x 3]
@group(0) @binding(5) var<storage, read_write> scal: array<f32>;
@group(0) @binding(6) var<storage, read_write> p: array<f32>;
@group(0) @binding(7) var<storage, read_write> r: array<f32>;
// [bands, cols]: each band's column sums (with more than one band).
@group(0) @binding(8) var<storage, read_write> colpart: array<f32>;

#import shared/reduce
#import shared/grid

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;

// The chunk of a workgroup on a 2-D grid (more than 65,535 chunks on large bindings).
fn chunk_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn next_col(j: u32) -> u32 {
    let n = j + dp.wrap;
    return select(n, n - dp.cols, n >= dp.cols);
}

// The sum of squares of column j over rows [first, last), in row order.
fn column_sum(j: u32, first: u32, last: u32) -> f32 {
    var sum = 0.0;
    for (var i = first; i < last; i = i + 1u) {
        let v = g[i * dp.cols + j];
        sum = sum + v * v;
    }
    return sum;
}

// One invocation per (band, column); neighbours read neighbouring columns of the same rows.
@compute @workgroup_size(256)
fn dasgo_colsum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let t = index(wid, nwg, lid);
    if (t >= dp.bands * dp.cols) { return; }
    let band = t / dp.cols;
    let first = band * dp.band_rows;
    colpart[t] = column_sum(t - band * dp.cols, first, min(first + dp.band_rows, dp.rows));
}

@compute @workgroup_size(256)
fn dasgo_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let j = index(wid, nwg, lid);
    if (j >= dp.cols) { return; }
    var sum = 0.0;
    if (dp.bands <= 1u) {
        sum = column_sum(j, 0u, dp.rows);
    } else {
        for (var b = 0u; b < dp.bands; b = b + 1u) { sum = sum + colpart[b * dp.cols + j]; }
    }
    let dj = lerp_torch(d[j], sum, dp.omb);
    d[j] = dj;
    r[j] = 1.0 / sqrt(dj + dp.eps);
}

@compute @workgroup_size(256)
fn dasgo_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let chunk = chunk_of(wid, nwg);
    if (chunk >= dp.chunks) { return; }
    let start = chunk * CHUNK;
    let end = min(start + CHUNK, dp.rows * dp.cols);
    var acc = vec2<f32>(0.0, 0.0);
    var j = (start + lid) % dp.cols;
    for (var k = start + lid; k < end; k = k + WG) {
        let mk = lerp_torch(m[k], g[k], dp.omm);
        m[k] = mk;
        acc = acc + split_square(mk * r[j]);
        j = next_col(j);
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) { partials[chunk] = total; }
}

@compute @workgroup_size(256)
fn dasgo_norm(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < dp.chunks; j = j + WG) { acc = acc + partials[j]; }
    red[lid] = acc;
    let t = workgroup_sum(lid);
    if (lid == 0u) { scal[0] = split_norm(t); }
}

@compute @workgroup_size(256)
fn dasgo_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let chunk = chunk_of(wid, nwg);
    if (chunk >= dp.chunks) { return; }
    let start = chunk * CHUNK;
    let end = min(start + CHUNK, dp.rows * dp.cols);
    let scale = dp.step / (scal[0] + 1e-16);
    var j = (start + lid) % dp.cols;
    for (var k = start + lid; k < end; k = k + WG) {
        p[k] = dp.decay * p[k] - scale * (m[k] * r[j]);
        j = next_col(j);
    }
}
