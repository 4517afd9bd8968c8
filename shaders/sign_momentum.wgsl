// Sign-momentum family and its SGD baseline (ALGORITHMS.md §4.1-4.4, §4.7).
// CPU twin: src/reference/sign_momentum.rs. Host side: src/kernels/sign_momentum.rs.
// WGSL's sign() returns 0 for 0, as torch.sign does (ALGORITHMS.md §1).
//
// Hyper slots (computed in src/optim/algorithm.rs):
//   sgd:          lr, decay (SGDW only), beta1 = momentum, c1 = L2 weight decay, c2 = 1 - dampening,
//                 c3 = 1 on the first step, c4 = 1 for Nesterov
//   signsgd:      lr, decay
//   signum:       lr, decay, beta1/omb1 = momentum
//   lion:         lr, decay, beta1/omb1, beta2/omb2
//   ano, anolog:  lr, decay, beta1/omb1 (anolog: beta1(t)), beta2/omb2, eps, c1 = 1 - beta2^t
#import shared/arena

@group(0) @binding(5) var<storage, read_write> s0: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> s1: array<vec4<f32>>;

// (4.1.1-4.1.4) without momentum: p <- decay*p - lr*(g + wd*p)
fn sgd_elem(h: Hyper, i: u32) {
    let p0 = p[i];
    let d = g[i] + h.c1 * p0;
    p[i] = h.decay * p0 - h.lr * d;
}

@compute @workgroup_size(256)
fn sgd_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = arena_block(wid, nwg);
    let h = hp.g[b.group];
    for (var i = b.start + lid; i < b.start + b.len; i = i + WG_SIZE) {
        sgd_elem(h, i);
    }
}

// (4.1.1-4.1.4) with momentum buffer s0 = b
fn sgd_momentum_elem(h: Hyper, i: u32) {
    let p0 = p[i];
    let d = g[i] + h.c1 * p0;
    var b = h.beta1 * s0[i] + h.c2 * d;
    if (h.c3 != 0.0) { b = d; }
    var u = b;
    if (h.c4 != 0.0) { u = d + h.beta1 * b; }
    s0[i] = b;
    p[i] = h.decay * p0 - h.lr * u;
}

@compute @workgroup_size(256)
fn sgd_momentum_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = arena_block(wid, nwg);
    let h = hp.g[b.group];
    for (var i = b.start + lid; i < b.start + b.len; i = i + WG_SIZE) {
        sgd_momentum_elem(h, i);
    }
}

// (4.2.1) p <- decay*p - lr*sign(g)
fn signsgd_elem(h: Hyper, i: u32) {
    p[i] = h.decay * p[i] - h.lr * sign(g[i]);
}

@compute @workgroup_size(256)
fn signsgd_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = arena_block(wid, nwg);
    let h = hp.g[b.group];
    for (var i = b.start + lid; i < b.start + b.len; i = i + WG_SIZE) {
        signsgd_elem(h, i);
    }
}

// (4.3.2-4.3.3) m <- mu*m + (1-mu)*g; p <- decay*p - lr*sign(m)
fn signum_elem(h: Hyper, i: u32) {
    let m = h.beta1 * s0[i] + h.omb1 * g[i];
    s0[i] = m;
    p[i] = h.decay * p[i] - h.lr * sign(m);
}

@compute @workgroup_size(256)
fn signum_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = arena_block(wid, nwg);
    let h = hp.g[b.group];
    for (var i = b.start + lid; i < b.start + b.len; i = i + WG_SIZE) {
        signum_elem(h, i);
    }
}

// (4.4.1-4.4.3) c from the OLD m; then m is updated.
fn lion_elem(h: Hyper, i: u32) {
    let gi = g[i];
    let m = s0[i];
    let c = h.beta1 * m + h.omb1 * gi;
    p[i] = h.decay * p[i] - h.lr * sign(c);
    s0[i] = h.beta2 * m + h.omb2 * gi;
}

@compute @workgroup_size(256)
fn lion_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = arena_block(wid, nwg);
    let h = hp.g[b.group];
    for (var i = b.start + lid; i < b.start + b.len; i = i + WG_SIZE) {
        lion_elem(h, i);
    }
}

// (4.7.2-4.7.7) s0 = m, s1 = v; the sign of g^2 - v uses v before this step's update.
fn ano_elem(h: Hyper, i: u32) {
    let gi = g[i];
    let m = h.beta1 * s0[i] + h.omb1 * gi;
    let v0 = s1[i];
    let g2 = gi * gi;
    let v = h.beta2 * v0 + h.omb2 * (sign(g2 - v0) * g2);
    let vhat = v / h.c1;
    let u = abs(gi) * sign(m) / sqrt(vhat + h.eps);
    s0[i] = m;
    s1[i] = v;
    p[i] = h.decay * p[i] - h.lr * u;
}

@compute @workgroup_size(256)
fn ano_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = arena_block(wid, nwg);
    let h = hp.g[b.group];
    for (var i = b.start + lid; i < b.start + b.len; i = i + WG_SIZE) {
        ano_elem(h, i);
    }
}
