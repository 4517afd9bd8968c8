// Lion-K (ALGORITHMS.md §4.5): Lion with sign replaced by the (sub)gradient of a convex K,
//   (4.5.1) c <- beta1*m + (1-beta1)*g,  (4.5.2) p <- decay*p - lr*dK(c),  (4.5.3) m <- beta2*m + (1-beta2)*g.
// K = ||x||_1 (sign) is plain Lion (sign_momentum.wgsl's lion_step). CPU twin: src/reference/lion_k.rs.
// Host side: src/kernels/lion_k.rs.
//
// Hyper slots (src/optim/algorithm.rs): lr, decay, beta1/omb1, beta2/omb2, and
//   c1 = map (the discriminant of `KMap`):
//             1 l2     c/||c||_2                 (K = ||x||_2, per tensor)
//             2 lp     sign(c)*|c|^(p-1)/||c||_p^(p-1)  (K = ||x||_p, per tensor)
//             3 huber  clip(c/a, -1, 1)          (K = sum of Huber functions with knee a)
//             4 tanh   tanh(s*c)                 (K = sum of log(cosh(s*x))/s)
//             5 relativistic  c/sqrt(c^2 + a^2)  (K = sum of sqrt(x^2 + a^2))
//   c2 = a or s (k_scale) for maps 3-5; p for maps 1-2 (2 for l2), c3 = p - 1.
// Every map sends c = 0 to 0 (a valid subgradient where K is not differentiable, §4.5(e)), so the
// arenas' zero padding stays zero and contributes nothing to the norms.
//
// The per-tensor norms (maps 1, 2) take two passes with no float atomics, as MARS's: `lion_k_partial`
// reduces each block to a pair (M, S) with M = max|c| and S = sum (|c|/M)^p, `lion_k_norm` merges the
// blocks of each tensor and stores (M, S^(1/p)), so that ||c||_p = M * S^(1/p) is never formed: the
// update computes (|c|/M) / S^(1/p) <= 1, which neither overflows for |c| near f32's maximum nor
// underflows to 0/0 for tiny c (subnormal c included). A NaN in c makes S NaN (and the tensor's
// update NaN) where max() and comparisons pass NaN on, which WGSL does not promise: the non-finite
// guard (skipping the step) is the library's NaN policy, not this.
#import shared/arena
#import shared/reduce

@group(0) @binding(5) var<storage, read_write> s0: array<vec4<f32>>;
// Per tensor: (M, S^(1/p)).
@group(0) @binding(8) var<storage, read_write> norms: array<vec2<f32>>;
// Per block: (M, S) of its elements.
@group(0) @binding(9) var<storage, read_write> partials: array<vec2<f32>>;
// Per tensor: (first block, number of blocks).
@group(0) @binding(10) var<storage, read> tensors: array<vec2<u32>>;

// u^p for 0 <= u <= 1; exact squares for the l2 map; 0 for u = 0 (WGSL leaves pow(0, y) undefined:
// it may be formed as exp2(y * log2(0))).
fn pow_p(u: f32, p: f32) -> f32 {
    if (p == 2.0) { return u * u; }
    if (u == 0.0) { return 0.0; }
    return pow(u, p);
}

// Merges two (M, S) pairs: the smaller scale's sum is rescaled to the larger.
fn merge(a: vec2<f32>, b: vec2<f32>, p: f32) -> vec2<f32> {
    var hi = a;
    var lo = b;
    if (a.x < b.x) { hi = b; lo = a; }
    if (lo.x == 0.0) { return vec2<f32>(hi.x, hi.y + lo.y); }
    return vec2<f32>(hi.x, hi.y + lo.y * pow_p(lo.x / hi.x, p));
}

// Four elements as one pair, scaled by their own max (merging them one by one costs four merges):
// (0, 0) for c = 0. Divided, not multiplied by 1/big, which overflows for a subnormal big (a device
// that keeps f32 subnormals: a momentum decaying for ~8,000 steps gets there) and would make the
// whole tensor's norm Inf or NaN. A NaN makes the sum NaN (NaN / big), whatever max() does with it.
fn quad(c: vec4<f32>, p: f32) -> vec2<f32> {
    let a = abs(c);
    let big = max(max(a.x, a.y), max(a.z, a.w));
    if (big == 0.0) { return vec2<f32>(0.0, 0.0); }
    let u = a / big;
    return vec2<f32>(big, pow_p(u.x, p) + pow_p(u.y, p) + pow_p(u.z, p) + pow_p(u.w, p));
}

// The pairs in red[0..256] merged, returned to invocation 0 (two barriers, as reduce.wgsl's sum).
fn workgroup_merge(lid: u32, p: f32) -> vec2<f32> {
    workgroupBarrier();
    if (lid < 16u) {
        var s = vec2<f32>(0.0, 0.0);
        for (var j = 0u; j < 16u; j = j + 1u) { s = merge(s, red[lid * 16u + j], p); }
        red[lid * 16u] = s;
    }
    workgroupBarrier();
    var total = vec2<f32>(0.0, 0.0);
    if (lid == 0u) {
        for (var j = 0u; j < 16u; j = j + 1u) { total = merge(total, red[j * 16u], p); }
    }
    return total;
}

fn momentum_mix(h: Hyper, i: u32) -> vec4<f32> {
    return h.beta1 * s0[i] + h.omb1 * g[i];
}

@compute @workgroup_size(256)
fn lion_k_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let bi = block_index(wid, nwg);
    if (bi >= arrayLength(&blocks)) { return; }
    let b = blocks[bi];
    let h = hp.g[b.group];
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = b.start + lid; i < b.start + b.len; i = i + WG_SIZE) {
        acc = merge(acc, quad(momentum_mix(h, i), h.c2), h.c2);
    }
    red[lid] = acc;
    let total = workgroup_merge(lid, h.c2);
    if (lid == 0u) {
        partials[bi] = total;
    }
}

@compute @workgroup_size(256)
fn lion_k_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t = block_index(wid, nwg);
    if (t >= arrayLength(&tensors)) { return; }
    let range = tensors[t];
    // Every block of a tensor is in one parameter group, so the first block's p is the tensor's.
    var p = 2.0;
    if (range.y > 0u) { p = hp.g[blocks[range.x].group].c2; }
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < range.y; j = j + WG_SIZE) {
        acc = merge(acc, partials[range.x + j], p);
    }
    red[lid] = acc;
    let q = workgroup_merge(lid, p);
    if (lid == 0u) {
        var root = q.y;
        if (p == 2.0) { root = sqrt(q.y); } else { root = pow(q.y, 1.0 / p); }
        norms[t] = vec2<f32>(q.x, root);
    }
}

// The elementwise maps 3-5.
fn k_map(h: Hyper, c: vec4<f32>) -> vec4<f32> {
    let a = h.c2;
    if (h.c1 == 3.0) {
        return clamp(c / a, vec4<f32>(-1.0), vec4<f32>(1.0));
    }
    if (h.c1 == 4.0) {
        // tanh(15) rounds to 1 in f32; the clamp keeps backends that form tanh from exp away from inf/inf.
        return tanh(clamp(a * c, vec4<f32>(-15.0), vec4<f32>(15.0)));
    }
    // c/sqrt(c^2 + a^2) with c and a both divided by max(|c|, a) first, so that c^2 cannot overflow.
    let big = max(abs(c), vec4<f32>(a));
    let x = c / big;
    let y = a / big;
    return x / sqrt(x * x + y * y);
}

fn lion_k_elem(h: Hyper, i: u32, tensor: u32) {
    let m = s0[i];
    let gi = g[i];
    let c = h.beta1 * m + h.omb1 * gi;
    p[i] = h.decay * p[i] - h.lr * k_map(h, c);
    s0[i] = h.beta2 * m + h.omb2 * gi;
}

#arena_kernel lion_k_step lion_k_elem

// The norm maps 1-2: sign(c) * ((|c|/M) / S^(1/p))^(p-1), and 0 for a tensor with c = 0.
fn lion_k_norm_elem(h: Hyper, i: u32, tensor: u32) {
    let m = s0[i];
    let gi = g[i];
    let c = h.beta1 * m + h.omb1 * gi;
    let n = norms[tensor];
    var d = vec4<f32>(0.0);
    if (n.x != 0.0) {
        let r = (abs(c) / n.x) / n.y;
        if (h.c3 == 1.0) {
            d = sign(c) * r;
        } else {
            // 0 where c = 0 without asking pow(0, p - 1) (undefined in WGSL).
            d = select(sign(c) * pow(r, vec4<f32>(h.c3)), vec4<f32>(0.0), r == vec4<f32>(0.0));
        }
    }
    p[i] = h.decay * p[i] - h.lr * d;
    s0[i] = h.beta2 * m + h.omb2 * gi;
}

#arena_kernel lion_k_norm_step lion_k_norm_elem
