// MARS's per-tensor norm of c = g + k*(g - g_prev) (ALGORITHMS.md §8.6.3), in two passes with no float
// atomics: `mars_partial` reduces each arena block to two partial sums of squares, `mars_norm` adds the
// blocks of each tensor. CPU twin: src/reference/adaptive.rs::mars_norm.
//
// Overflow (ALGORITHMS.md §2.6) without a max pass or a division per element: elements with
// |c| <= 2^40 add c^2 to the first sum (at most 2^32 * 2^80 = 2^112, no overflow), larger ones add
// (c * 2^-64)^2 to the second. Underflow of tiny c^2 is harmless: the norm only matters when it
// exceeds 1 (the clip threshold), and then such terms are below f32 rounding of the sum.
#import shared/arena

@group(0) @binding(7) var<storage, read> gprev: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> norms: array<f32>;
@group(0) @binding(9) var<storage, read_write> partials: array<vec2<f32>>;
// Per tensor: (first block, number of blocks).
@group(0) @binding(10) var<storage, read> tensors: array<vec2<u32>>;

const BIG: f32 = 1099511627776.0;         // 2^40
const DOWN: f32 = 5.421010862427522e-20;  // 2^-64
const UP: f32 = 18446744073709551616.0;   // 2^64

var<workgroup> red: array<vec2<f32>, WG_SIZE>;

// The sum of red[0..WG_SIZE], returned to invocation 0, with two barriers (16 invocations add 16
// entries each, then one adds those 16) instead of the 8 of a tree: on lavapipe each barrier costs
// far more than a few serial adds (MARS went from 0.47 to 0.7 of copy bandwidth). 16 * 16 = WG_SIZE.
// The caller has stored red[lid] already.
fn workgroup_sum(lid: u32) -> vec2<f32> {
    workgroupBarrier();
    if (lid < 16u) {
        var s = vec2<f32>(0.0, 0.0);
        for (var j = 0u; j < 16u; j = j + 1u) {
            s = s + red[lid * 16u + j];
        }
        red[lid * 16u] = s;
    }
    workgroupBarrier();
    var total = vec2<f32>(0.0, 0.0);
    if (lid == 0u) {
        for (var j = 0u; j < 16u; j = j + 1u) {
            total = total + red[j * 16u];
        }
    }
    return total;
}

@compute @workgroup_size(256)
fn mars_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let bi = block_index(wid, nwg);
    if (bi >= arrayLength(&blocks)) { return; }
    let b = blocks[bi];
    let k = hp.g[b.group].c1;
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = b.start + lid; i < b.start + b.len; i = i + WG_SIZE) {
        let gi = g[i];
        let c = (gi - gprev[i]) * k + gi;
        let big = abs(c) > vec4<f32>(BIG);
        let small = select(c, vec4<f32>(0.0), big);
        let large = select(vec4<f32>(0.0), c * DOWN, big);
        acc = acc + vec2<f32>(dot(small, small), dot(large, large));
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) {
        partials[bi] = total;
    }
}

@compute @workgroup_size(256)
fn mars_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = block_index(wid, nwg);
    if (t >= arrayLength(&tensors)) { return; }
    let range = tensors[t];
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < range.y; j = j + WG_SIZE) {
        acc = acc + partials[range.x + j];
    }
    red[lid] = acc;
    let q = workgroup_sum(lid);
    if (lid == 0u) {
        if (q.y > 0.0) {
            norms[t] = UP * sqrt(q.y + (q.x * DOWN) * DOWN);
        } else {
            norms[t] = sqrt(q.x);
        }
    }
}
