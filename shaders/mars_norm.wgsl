// MARS's per-tensor norm of c = g + k*(g - g_prev) (ALGORITHMS.md §8.6.3), in two passes with no float
// atomics: `mars_partial` reduces each arena block to (scale, sum of (c/scale)^2), `mars_norm` combines
// the blocks of each tensor. Scaling by the block's max |c| keeps the squares from overflowing f32
// (ALGORITHMS.md §2.6). CPU twin: src/reference/adaptive.rs::mars_norm.
#import shared/arena

@group(0) @binding(7) var<storage, read> gprev: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> norms: array<f32>;
@group(0) @binding(9) var<storage, read_write> partials: array<vec2<f32>>;
// Per tensor: (first block, number of blocks).
@group(0) @binding(10) var<storage, read> tensors: array<vec2<u32>>;

var<workgroup> red_scale: array<f32, WG_SIZE>;
var<workgroup> red_sum: array<f32, WG_SIZE>;

// Merge two (scale, scaled sum of squares) pairs.
fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    if (a.x >= b.x) {
        if (a.x == 0.0) { return vec2<f32>(0.0, 0.0); }
        let r = b.x / a.x;
        return vec2<f32>(a.x, a.y + b.y * r * r);
    }
    let r = a.x / b.x;
    return vec2<f32>(b.x, b.y + a.y * r * r);
}

fn tree_merge(lid: u32) {
    for (var s = WG_SIZE / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let m = merge(vec2<f32>(red_scale[lid], red_sum[lid]),
                          vec2<f32>(red_scale[lid + s], red_sum[lid + s]));
            red_scale[lid] = m.x;
            red_sum[lid] = m.y;
        }
        workgroupBarrier();
    }
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
        let a = abs(c);
        let s = max(max(a.x, a.y), max(a.z, a.w));
        if (s > 0.0) {
            let cs = c / s;
            acc = merge(acc, vec2<f32>(s, dot(cs, cs)));
        }
    }
    red_scale[lid] = acc.x;
    red_sum[lid] = acc.y;
    workgroupBarrier();
    tree_merge(lid);
    if (lid == 0u) {
        partials[bi] = vec2<f32>(red_scale[0], red_sum[0]);
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
        acc = merge(acc, partials[range.x + j]);
    }
    red_scale[lid] = acc.x;
    red_sum[lid] = acc.y;
    workgroupBarrier();
    tree_merge(lid);
    if (lid == 0u) {
        norms[t] = red_scale[0] * sqrt(red_sum[0]);
    }
}
