// Muon's elementwise passes around NS5 (ALGORITHMS.md §5.2, KellerJordan/Muon `muon_update`):
//   muon_momentum: (5.2.1) m <- lerp(m, g, 1 - beta); (5.2.2) u <- lerp(g, m, beta) if Nesterov, else m
//   muon_apply:    (5.2.6) p <- (1 - lr*wd)*p - (lr*ratio)*O, O = NS5(u), ratio = adjust_lr's factor
// torch's lerp(a, b, w) is a + w*(b - a) for w < 0.5 and b - (b - a)*(1 - w) otherwise (§2.7).
// CPU twin: src/reference/muon.rs.

struct MuonParams {
    len: u32,
    nesterov: u32,
    _p0: u32,
    _p1: u32,
    beta: f32,
    omb: f32,     // 1 - beta
    decay: f32,   // 1 - lr * weight_decay (the unadjusted lr)
    step: f32,    // lr * ratio
}

@group(0) @binding(0) var<uniform> mp: MuonParams;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> u: array<f32>;
@group(0) @binding(4) var<storage, read> o: array<f32>;
@group(0) @binding(5) var<storage, read_write> p: array<f32>;
// The same tensors as vec4s, for the passes where len % 4 == 0.
@group(0) @binding(6) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> u4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> o4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> p4: array<vec4<f32>>;

#import shared/grid

@compute @workgroup_size(256)
fn muon_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= mp.len) { return; }
    let gi = g[i];
    let mi = lerp_torch(m[i], gi, mp.omb);
    m[i] = mi;
    if (mp.nesterov != 0u) {
        u[i] = lerp_torch(gi, mi, mp.beta);
    } else {
        u[i] = mi;
    }
}

@compute @workgroup_size(256)
fn muon_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= mp.len) { return; }
    p[i] = mp.decay * p[i] - mp.step * o[i];
}

// muon_momentum over vec4s (len % 4 == 0).
@compute @workgroup_size(256)
fn muon_momentum4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= mp.len / 4u) { return; }
    let gi = g4[i];
    let mi = lerp_torch4(m4[i], gi, mp.omb);
    m4[i] = mi;
    if (mp.nesterov != 0u) {
        u4[i] = lerp_torch4(gi, mi, mp.beta);
    } else {
        u4[i] = mi;
    }
}

// muon_apply over vec4s (len % 4 == 0).
@compute @workgroup_size(256)
fn muon_apply4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= mp.len / 4u) { return; }
    p4[i] = mp.decay * p4[i] - mp.step * o4[i];
}
