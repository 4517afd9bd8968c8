// Shared pieces of the two-pass reductions (no float atomics, ALGORITHMS.md §2.5).
//
// Overflow-safe sums of squares without a max pass (§2.6): entries with |v| <= 2^40 add v^2 to the
// first component (at most 2^32 * 2^80 = 2^112 for 2^32 elements), larger ones add (v * 2^-64)^2 to
// the second; `split_norm` turns the pair into the norm.

const RED_WG: u32 = 256u;
const BIG: f32 = 1099511627776.0;         // 2^40
const DOWN: f32 = 5.421010862427522e-20;  // 2^-64
const UP: f32 = 18446744073709551616.0;   // 2^64

var<workgroup> red: array<vec2<f32>, RED_WG>;

// v^2 into the (small, large) pair.
fn split_square(v: f32) -> vec2<f32> {
    if (abs(v) > BIG) {
        let w = v * DOWN;
        return vec2<f32>(0.0, w * w);
    }
    return vec2<f32>(v * v, 0.0);
}

// The four squares of v into one (small, large) pair.
fn split_square4(v: vec4<f32>) -> vec2<f32> {
    return split_square(v.x) + split_square(v.y) + split_square(v.z) + split_square(v.w);
}

// sqrt of a (small, large) pair of sums of squares.
fn split_norm(q: vec2<f32>) -> f32 {
    if (q.y > 0.0) {
        return UP * sqrt(q.y + (q.x * DOWN) * DOWN);
    }
    return sqrt(q.x);
}

// The sum of red[0..256], returned to invocation 0, with two barriers (16 invocations add 16 entries
// each, then one adds those 16) instead of the 8 of a tree: on lavapipe each barrier costs far more
// than a few serial adds (MARS went from 0.47 to 0.7 of copy bandwidth). The caller has stored
// red[lid] already.
fn workgroup_sum(lid: u32) -> vec2<f32> {
    workgroupBarrier();
    if (lid < 16u) {
        var s = vec2<f32>(0.0, 0.0);
        for (var j = 0u; j < 16u; j = j + 1u) { s = s + red[lid * 16u + j]; }
        red[lid * 16u] = s;
    }
    workgroupBarrier();
    var total = vec2<f32>(0.0, 0.0);
    if (lid == 0u) {
        for (var j = 0u; j < 16u; j = j + 1u) { total = total + red[j * 16u]; }
    }
    return total;
}
