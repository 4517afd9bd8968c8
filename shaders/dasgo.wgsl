// DASGO, ASGO's diagonal variant (ALGORITHMS.md §5.7; infinity-stars/ASGO optimizers/dasgo.py). For a
// parameter viewed as rows x cols:
//   d_j <- lerp(d_j, sum_i G_ij^2, 1 - beta2)       (one statistic per column, d = 0 at start)
//   M   <- lerp(M, G, 1 - momentum)
//   U_ij = M_ij * r_j,  r_j = 1 / sqrt(d_j + eps)   (the reference's M * (d + eps)^-0.5)
//   p   <- (1 - lr*wd) * p - lr * 0.2*sqrt(rows*cols) * U / (||U||_F + 1e-16)      (update RMS 0.2)
// A stack of `count` same-view parameters runs as one [count * rows, cols] array (tensor z's
// statistics at z * cols, its norm at z). Five passes: column sums over bands of rows (only when
// there is more than one band; shared/columns.wgsl), column statistics (and r), momentum with the
// partial sums of ||U||^2, the norms, the update. The two element passes walk 4096-element
// chunks of one tensor, each invocation every 256th element (or vec4, where cols % 4 == 0 and so
// every vec4 lies in one row), so its column advances by 256 mod cols (or mod cols / 4: `wrap`) with
// one compare instead of a division per element (integer division is scalar on CPU drivers: it cost
// lavapipe more than the arithmetic).
// CPU twin: src/reference/dasgo.rs.

struct DasgoParams {
    rows: u32,    // of one tensor
    cols: u32,
    chunks: u32,  // element-pass workgroups per tensor
    wrap: u32,    // 256 mod cols, or mod cols / 4 for the vec4 passes
    omb: f32,     // 1 - beta2
    omm: f32,     // 1 - momentum
    eps: f32,
    decay: f32,   // 1 - lr * weight_decay
    step: f32,    // lr * 0.2 * sqrt(rows * cols)
    bands: u32,   // bands of rows the column sums are split into
    band_rows: u32, // rows per band (the last may hold fewer)
    count: u32,   // tensors in the stack
}

@group(0) @binding(0) var<uniform> dp: DasgoParams;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> d: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec2<f32>>;
// [count]: each tensor's ||U||_F
@group(0) @binding(5) var<storage, read_write> scal: array<f32>;
@group(0) @binding(6) var<storage, read_write> p: array<f32>;
@group(0) @binding(7) var<storage, read_write> r: array<f32>;
// [bands, count * cols]: each band's column sums (with more than one band).
@group(0) @binding(8) var<storage, read_write> colpart: array<f32>;

// The same tensors as vec4s, for the passes where cols % 4 == 0 (all but the norms).
@group(0) @binding(9) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> p4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> r4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> colpart4: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read_write> d4: array<vec4<f32>>;

#import shared/reduce
#import shared/grid
#import shared/columns

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;

fn columns() -> Columns {
    return Columns(dp.rows, dp.cols, dp.count, dp.bands, dp.band_rows);
}

// A walk's next column: `wrap` on, in a row of `width` (cols, or cols / 4 vec4s).
fn next_col(j: u32, width: u32) -> u32 {
    let n = j + dp.wrap;
    return select(n, n - width, n >= width);
}

// One invocation per (band, stacked column).
@compute @workgroup_size(256)
fn dasgo_colsum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let t = index(wid, nwg, lid);
    if (t >= dp.bands * dp.count * dp.cols) { return; }
    colpart[t] = band_column_sum(columns(), t);
}

// One invocation per stacked column t = z * cols + j.
@compute @workgroup_size(256)
fn dasgo_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let t = index(wid, nwg, lid);
    if (t >= dp.count * dp.cols) { return; }
    let dj = lerp_torch(d[t], column_total(columns(), t), dp.omb);
    d[t] = dj;
    r[t] = 1.0 / sqrt(dj + dp.eps);
}

// Where invocation lid of workgroup (x, z, w) starts: its first item k of the stack, the item after
// the chunk's last, and the first item's column; items are elements (width = cols) or vec4s
// (width = cols / 4).
struct Walk {
    k: u32,
    end: u32,
    j: u32,
}

fn walk(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, width: u32) -> Walk {
    let chunk = grid_chunk(wid, nwg);
    let per_chunk = select(CHUNK, CHUNK / 4u, width < dp.cols);
    let size = dp.rows * width;
    let local = chunk * per_chunk + lid;
    let base = wid.y * size;
    return Walk(base + local, base + min((chunk + 1u) * per_chunk, size), local % width);
}

@compute @workgroup_size(256)
fn dasgo_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    if (grid_chunk(wid, nwg) >= dp.chunks) { return; }
    let w = walk(wid, nwg, lid, dp.cols);
    let rz = wid.y * dp.cols;
    var acc = vec2<f32>(0.0, 0.0);
    var j = w.j;
    for (var k = w.k; k < w.end; k = k + WG) {
        let mk = lerp_torch(m[k], g[k], dp.omm);
        m[k] = mk;
        acc = acc + split_square(mk * r[rz + j]);
        j = next_col(j, dp.cols);
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) { partials[wid.y * dp.chunks + grid_chunk(wid, nwg)] = total; }
}

// Workgroup z: tensor z's ||U||_F from its partial sums.
@compute @workgroup_size(256)
fn dasgo_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wid.x;
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < dp.chunks; j = j + WG) { acc = acc + partials[z * dp.chunks + j]; }
    red[lid] = acc;
    let t = workgroup_sum(lid);
    if (lid == 0u) { scal[z] = split_norm(t); }
}

// The update, on the partial pass's grid and walk.
@compute @workgroup_size(256)
fn dasgo_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    if (grid_chunk(wid, nwg) >= dp.chunks) { return; }
    let w = walk(wid, nwg, lid, dp.cols);
    let rz = wid.y * dp.cols;
    let scale = dp.step / (scal[wid.y] + 1e-16);
    var j = w.j;
    for (var k = w.k; k < w.end; k = k + WG) {
        p[k] = dp.decay * p[k] - scale * (m[k] * r[rz + j]);
        j = next_col(j, dp.cols);
    }
}

// dasgo_partial over vec4s (cols % 4 == 0).
@compute @workgroup_size(256)
fn dasgo_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let width = dp.cols / 4u;
    if (grid_chunk(wid, nwg) >= dp.chunks) { return; }
    let w = walk(wid, nwg, lid, width);
    let rz = wid.y * width;
    var acc = vec2<f32>(0.0, 0.0);
    var j = w.j;
    for (var k = w.k; k < w.end; k = k + WG) {
        let mk = lerp_torch4(m4[k], g4[k], dp.omm);
        m4[k] = mk;
        acc = acc + split_square4(mk * r4[rz + j]);
        j = next_col(j, width);
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) { partials[wid.y * dp.chunks + grid_chunk(wid, nwg)] = total; }
}

// dasgo_apply over vec4s (cols % 4 == 0).
@compute @workgroup_size(256)
fn dasgo_apply4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let width = dp.cols / 4u;
    if (grid_chunk(wid, nwg) >= dp.chunks) { return; }
    let w = walk(wid, nwg, lid, width);
    let rz = wid.y * width;
    let scale = dp.step / (scal[wid.y] + 1e-16);
    var j = w.j;
    for (var k = w.k; k < w.end; k = k + WG) {
        p4[k] = dp.decay * p4[k] - scale * (m4[k] * r4[rz + j]);
        j = next_col(j, width);
    }
}

// dasgo_colsum over vec4 columns (cols % 4 == 0): one invocation per (band, four stacked columns).
@compute @workgroup_size(256)
fn dasgo_colsum4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = index(wid, nwg, lid);
    if (t >= dp.bands * dp.count * dp.cols / 4u) { return; }
    colpart4[t] = band_column_sum4(columns(), t);
}

// dasgo_cols over vec4 columns (cols % 4 == 0).
@compute @workgroup_size(256)
fn dasgo_cols4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t = index(wid, nwg, lid);
    if (t >= dp.count * dp.cols / 4u) { return; }
    let dj = lerp_torch4(d4[t], column_total4(columns(), t), dp.omb);
    d4[t] = dj;
    r4[t] = 1.0 / sqrt(dj + dp.eps);
}
