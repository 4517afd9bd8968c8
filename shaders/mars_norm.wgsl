// MARS's per-tensor norm of c = g + k*(g - g_prev) (ALGORITHMS.md §8.6.3), in two passes with no float
// atomics: `mars_partial` reduces each arena block to two partial sums of squares, `mars_norm` adds the
// blocks of each tensor. CPU twin: src/reference/adaptive.rs::mars_norm.
//
// Overflow (ALGORITHMS.md §2.6) without a max pass or a division per element: elements with
// |c| <= 2^40 add c^2 to the first sum (at most 2^32 * 2^80 = 2^112, no overflow), larger ones add
// (c * 2^-64)^2 to the second. Underflow of tiny c^2 is harmless: the norm only matters when it
// exceeds 1 (the clip threshold), and then such terms are below f32 rounding of the sum.
#import shared/arena
#import shared/reduce

@group(0) @binding(7) var<storage, read> gprev: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> norms: array<f32>;
@group(0) @binding(9) var<storage, read_write> partials: array<vec2<f32>>;
// Per tensor: (first block, number of blocks).
@group(0) @binding(10) var<storage, read> tensors: array<vec2<u32>>;


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
        acc = acc + split_square(c.x) + split_square(c.y) + split_square(c.z) + split_square(c.w);
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
    if (lid == 0u) { norms[t] = split_norm(q); }
}
