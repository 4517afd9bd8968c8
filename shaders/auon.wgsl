// AuON's update (ALGORITHMS.md §5.5); the momentum pass is Muon's (shaders/muon.wgsl), the norms are
// shaders/newton_schulz.wgsl's. With v the Nesterov momentum u (or NS5 of it, for Hybrid-AuON),
// n = ||v||_F and rms = sqrt(mean(cosh(s * v)^2)) (cosh_partial):
//   package (ryyzn9/AuON auon/optimizer.py), s = gamma / (n + 1e-7):
//       p <- (1 - lr*wd)*p;  if n > 0: p <- p - lr * v / (rms + 1e-8)
//   paper AuON (5.5.1-5.5.4), s = 1 / (n + 1e-7) (no gamma): the same with v replaced by
//       X = v / (n + 1e-7) (ap.paper = 1)
//   paper Hybrid-AuON: v = NS5(X) with X = u / (||u|| + 1e-7), s = 1: the package's step on that v
// A stack of same-shape tensors runs as one; the update's grid carries each element's tensor z, whose
// norms it reads.
// CPU twin: src/reference/auon.rs.

struct AuonParams {
    len: u32,          // elements of the stack
    paper: u32,
    per: u32,          // elements of one tensor (N)
    _p1: u32,
    decay: f32,
    lr: f32,
    inv_sqrt_n: f32,   // 1 / sqrt(N), turns sqrt(sum cosh^2) into the RMS
    _p2: f32,
}

@group(0) @binding(0) var<uniform> ap: AuonParams;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read> norms: array<f32>;
@group(0) @binding(3) var<storage, read> cosh_norm: array<f32>;
@group(0) @binding(4) var<storage, read_write> p: array<f32>;
// v and p as vec4s, for tensors of a multiple of 4 elements.
@group(0) @binding(5) var<storage, read> v4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> p4: array<vec4<f32>>;

#import shared/grid

// Workgroup (x, z, w): elements 256 * (x + w * (grid x)) + lid of tensor z (the grid carries the
// tensor, so no element divides to find it).
@compute @workgroup_size(256)
fn auon_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let z = wid.y;
    let local = grid_chunk(wid, nwg) * 256u + lid;
    if (local >= ap.per) { return; }
    let i = z * ap.per + local;
    let p0 = ap.decay * p[i];
    let n = norms[z];
    if (n == 0.0) {
        p[i] = p0;   // (5.5.7): the step is skipped, the decay is not
        return;
    }
    var x = v[i];
    if (ap.paper != 0u) { x = x / (n + 1e-7); }
    let rms = cosh_norm[z] * ap.inv_sqrt_n;
    p[i] = p0 - ap.lr * (x / (rms + 1e-8));
}

// auon_apply over vec4s (per % 4 == 0): workgroup (x, z, w) takes vec4s 256 * (x + w * (grid x)) + lid
// of tensor z.
@compute @workgroup_size(256)
fn auon_apply4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let z = wid.y;
    let per4 = ap.per / 4u;
    let local = grid_chunk(wid, nwg) * 256u + lid;
    if (local >= per4) { return; }
    let i = z * per4 + local;
    let p0 = ap.decay * p4[i];
    let n = norms[z];
    if (n == 0.0) {
        p4[i] = p0;
        return;
    }
    var x = v4[i];
    if (ap.paper != 0u) { x = x / (n + 1e-7); }
    let rms = cosh_norm[z] * ap.inv_sqrt_n;
    p4[i] = p0 - ap.lr * (x / (rms + 1e-8));
}
