// REG's direction, implemented as the RACS operator of pytorch-optimizer `RACS` (ALGORITHMS.md §5.6;
// REG's own formula is unconfirmed there). For G viewed as rows x cols (1-D: n x 1):
//   (5.6.2) s <- lerp(s, mean_j G^2, 1 - beta)      q <- lerp(q, mean_i G^2, 1 - beta)   (s = 0, q = 1 at start)
//   (5.6.3) Gh_ij = G_ij / (sqrt(s_i + eps) * sqrt(q_j + eps))
//   (5.6.4) eta = 1 at t = 1, else gamma / max(||Gh||_F / (theta + eps), gamma);  theta <- eta * ||Gh||_F
//   (5.6.1, 5.6.5) p <- (1 - lr*wd) * p - lr*alpha*eta * Gh
// A stack of `count` same-view tensors runs as one [count * rows, cols] array: its stacked rows are
// the tensors' rows in order, so the row statistics need no tensor index; the column statistics,
// the norm and eta are per tensor (z). Wide rows get a workgroup each and the column sums split into
// bands of rows (shared/columns.wgsl), so that a stack of few rows or few columns still
// fills a large GPU.
// CPU twin: src/reference/racs.rs.

struct RacsParams {
    rows: u32,    // of one tensor
    cols: u32,
    chunks: u32,  // partial-sum workgroups per tensor
    first: u32,
    omb: f32,     // 1 - beta
    eps: f32,
    gamma: f32,
    decay: f32,   // 1 - lr * weight_decay
    step: f32,    // lr * alpha
    count: u32,   // tensors in the stack
    bands: u32,   // bands of rows the column sums are split into (as DASGO's)
    band_rows: u32, // rows per band (the last may hold fewer)
    wrap: u32,    // 256 mod width: a walk's column advance (width = cols, or cols / 4 for vec4 walks)
    step_rows: u32, // 256 / width: a walk's row advance
    _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> rp: RacsParams;
@group(0) @binding(1) var<storage, read> g: array<f32>;
// [count * rows]
@group(0) @binding(2) var<storage, read_write> s: array<f32>;
// [count * cols]
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
// [count * chunks]
@group(0) @binding(4) var<storage, read_write> partials: array<vec2<f32>>;
// [count][||Gh||_F, theta, eta, unused]
@group(0) @binding(5) var<storage, read_write> scal: array<f32>;
// [bands, count * cols]: each band's column sums of G^2 (with more than one band).
@group(0) @binding(7) var<storage, read_write> colpart: array<f32>;
@group(0) @binding(6) var<storage, read_write> p: array<f32>;

// The same tensors as vec4s, for the column, norm and update passes where cols % 4 == 0.
@group(0) @binding(8) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> q4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> p4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> colpart4: array<vec4<f32>>;

#import shared/reduce
#import shared/grid
#import shared/columns

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;

// Row statistics, one invocation per stacked row (narrow rows: fewer than 64 columns).
@compute @workgroup_size(256)
fn racs_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= rp.count * rp.rows) { return; }
    var sum = 0.0;
    for (var j = 0u; j < rp.cols; j = j + 1u) {
        let v = g[i * rp.cols + j];
        sum = sum + v * v;
    }
    s[i] = lerp_torch(s[i], sum / f32(rp.cols), rp.omb);
}

// Row statistics, one workgroup per stacked row (wide rows): lane l sums columns l, l + 256, ... so
// neighbouring lanes read neighbouring columns, then the workgroup adds its lanes.
@compute @workgroup_size(256)
fn racs_rows_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= rp.count * rp.rows) { return; }
    var sum = 0.0;
    for (var j = lid; j < rp.cols; j = j + WG) {
        let v = g[i * rp.cols + j];
        sum = sum + v * v;
    }
    red[lid] = vec2<f32>(sum, 0.0);
    let total = workgroup_sum(lid).x;
    if (lid == 0u) { s[i] = lerp_torch(s[i], total / f32(rp.cols), rp.omb); }
}

// racs_rows_wide over vec4s (cols % 4 == 0): lane l sums vec4 columns l, l + 256, ... component by
// component, then adds its four components in order.
@compute @workgroup_size(256)
fn racs_rows_wide4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= rp.count * rp.rows) { return; }
    let width = rp.cols / 4u;
    var acc = vec4<f32>(0.0);
    for (var j = lid; j < width; j = j + WG) {
        let v = g4[i * width + j];
        acc = acc + v * v;
    }
    red[lid] = vec2<f32>(acc.x + acc.y + acc.z + acc.w, 0.0);
    let total = workgroup_sum(lid).x;
    if (lid == 0u) { s[i] = lerp_torch(s[i], total / f32(rp.cols), rp.omb); }
}

fn columns() -> Columns {
    return Columns(rp.rows, rp.cols, rp.count, rp.bands, rp.band_rows);
}

// Column sums over one band of rows, one invocation per (band, stacked column).
@compute @workgroup_size(256)
fn racs_colsum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t = index(wid, nwg, lid);
    if (t >= rp.bands * rp.count * rp.cols) { return; }
    colpart[t] = band_column_sum(columns(), t);
}

@compute @workgroup_size(256)
fn racs_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    // t = z * cols + j: column j of tensor z.
    let t = index(wid, nwg, lid);
    if (t >= rp.count * rp.cols) { return; }
    q[t] = lerp_torch(q[t], column_total(columns(), t) / f32(rp.rows), rp.omb);
}

// racs_colsum over vec4 columns (cols % 4 == 0).
@compute @workgroup_size(256)
fn racs_colsum4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let t = index(wid, nwg, lid);
    if (t >= rp.bands * rp.count * rp.cols / 4u) { return; }
    colpart4[t] = band_column_sum4(columns(), t);
}

// racs_cols over vec4 columns (cols % 4 == 0).
@compute @workgroup_size(256)
fn racs_cols4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let t = index(wid, nwg, lid);
    if (t >= rp.count * rp.cols / 4u) { return; }
    q4[t] = lerp_torch4(q4[t], column_total4(columns(), t) / f32(rp.rows), rp.omb);
}

// Where an invocation is in its chunk's walk: item k of the stack, its stacked row i, column j.
// Items are elements (width = cols) or, where cols % 4 == 0, vec4s (width = cols / 4: every vec4
// then lies in one row); `wrap` and `step_rows` are set for the walk's width.
struct Walk {
    k: u32,
    i: u32,
    j: u32,
}

// The items of a chunk (4096 elements).
fn per_chunk(width: u32) -> u32 {
    return select(CHUNK, CHUNK / 4u, width < rp.cols);
}

// Invocation lid's first item of chunk `chunk` of tensor z (the walk's only division).
fn walk_start(z: u32, chunk: u32, lid: u32, width: u32) -> Walk {
    let local = chunk * per_chunk(width) + lid;
    let r = local / width;
    return Walk(z * rp.rows * width + local, z * rp.rows + r, local - r * width);
}

// 256 items on: 256 / width rows and 256 mod width columns, carrying a wrapped column into a row.
fn walk_next(w: Walk, width: u32) -> Walk {
    var i = w.i + rp.step_rows;
    var j = w.j + rp.wrap;
    if (j >= width) {
        j = j - width;
        i = i + 1u;
    }
    return Walk(w.k + WG, i, j);
}

// The end of chunk `chunk` of tensor z in the stack.
fn chunk_end(z: u32, chunk: u32, width: u32) -> u32 {
    let size = rp.rows * width;
    return min(z * size + (chunk + 1u) * per_chunk(width), (z + 1u) * size);
}

fn g_hat(w: Walk, z: u32) -> f32 {
    return g[w.k] / (sqrt(s[w.i] + rp.eps) * sqrt(q[z * rp.cols + w.j] + rp.eps));
}

fn g_hat4(w: Walk, z: u32, width: u32) -> vec4<f32> {
    return g4[w.k] / (sqrt(s[w.i] + rp.eps) * sqrt(q4[z * width + w.j] + rp.eps));
}

// Workgroup (x, z, w): chunk x + w * (grid x) of tensor z (chunks fold past a dimension's limit;
// src/kernels/newton_schulz.rs chunk_grid).
@compute @workgroup_size(256)
fn racs_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let chunk = grid_chunk(wid, nwg);
    if (chunk >= rp.chunks) { return; }
    let z = wid.y;
    let end = chunk_end(z, chunk, rp.cols);
    var acc = vec2<f32>(0.0, 0.0);
    for (var w = walk_start(z, chunk, lid, rp.cols); w.k < end; w = walk_next(w, rp.cols)) {
        acc = acc + split_square(g_hat(w, z));
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) { partials[z * rp.chunks + chunk] = total; }
}

// racs_partial over vec4s (cols % 4 == 0).
@compute @workgroup_size(256)
fn racs_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let chunk = grid_chunk(wid, nwg);
    if (chunk >= rp.chunks) { return; }
    let z = wid.y;
    let width = rp.cols / 4u;
    let end = chunk_end(z, chunk, width);
    var acc = vec2<f32>(0.0, 0.0);
    for (var w = walk_start(z, chunk, lid, width); w.k < end; w = walk_next(w, width)) {
        acc = acc + split_square4(g_hat4(w, z, width));
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) { partials[z * rp.chunks + chunk] = total; }
}

// Workgroup z: ||Gh||_F of tensor z from its partials, then the norm-growth limiter (5.6.4).
@compute @workgroup_size(256)
fn racs_eta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wid.x;
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < rp.chunks; j = j + WG) { acc = acc + partials[z * rp.chunks + j]; }
    red[lid] = acc;
    let t = workgroup_sum(lid);
    if (lid == 0u) {
        let norm = split_norm(t);
        var eta = 1.0;
        if (rp.first == 0u) {
            eta = rp.gamma / max(norm / (scal[4u * z + 1u] + rp.eps), rp.gamma);
        }
        scal[4u * z] = norm;
        scal[4u * z + 1u] = norm * eta;
        scal[4u * z + 2u] = eta;
    }
}

// The update, on the partial pass's grid and walk.
@compute @workgroup_size(256)
fn racs_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let chunk = grid_chunk(wid, nwg);
    if (chunk >= rp.chunks) { return; }
    let z = wid.y;
    let end = chunk_end(z, chunk, rp.cols);
    let scale = rp.step * scal[4u * z + 2u];
    for (var w = walk_start(z, chunk, lid, rp.cols); w.k < end; w = walk_next(w, rp.cols)) {
        p[w.k] = rp.decay * p[w.k] - scale * g_hat(w, z);
    }
}

// racs_apply over vec4s (cols % 4 == 0).
@compute @workgroup_size(256)
fn racs_apply4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let chunk = grid_chunk(wid, nwg);
    if (chunk >= rp.chunks) { return; }
    let z = wid.y;
    let width = rp.cols / 4u;
    let end = chunk_end(z, chunk, width);
    let scale = rp.step * scal[4u * z + 2u];
    for (var w = walk_start(z, chunk, lid, width); w.k < end; w = walk_next(w, width)) {
        p4[w.k] = rp.decay * p4[w.k] - scale * g_hat4(w, z, width);
    }
}
