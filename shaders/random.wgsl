// Counter-based random draws (ALGORITHMS.md §6.1, §11.5): element i of sample k of tensor t under seed
// S is a function of (S, i, k, t) alone, so streams do not depend on dispatch geometry and the CPU
// reproduces them bit for bit (src/reference/random.rs).
//   counter = (i mod 2^32, i >> 32, k, tensor_id), key = (S mod 2^32, S >> 32)
//   rademacher: +1 if bit 31 of output word 0 is 0, else -1
//   uniform:    (word0 >> 8) * 2^-24, in [0, 1)
#import shared/philox

struct RandomParams {
    seed_lo: u32,
    seed_hi: u32,
    sample: u32,
    tensor_id: u32,
    len: u32,
    offset_lo: u32,   // index of element 0 (tensors beyond 2^32 elements are drawn in pieces)
    offset_hi: u32,
    samples: u32,     // rademacher_samples: samples k = sample .. sample + samples - 1
}

@group(0) @binding(0) var<uniform> rp: RandomParams;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
// philox_raw: (counter, key) pairs in, four output words per pair out.
@group(0) @binding(2) var<storage, read> raw_in: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> raw_out: array<vec4<u32>>;

fn draw(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> vec2<u32> {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= rp.len) { return vec2<u32>(0xffffffffu, 0u); }
    let lo = rp.offset_lo + i;
    let hi = rp.offset_hi + select(0u, 1u, lo < i);   // carry
    let w = philox4x32_10(vec4<u32>(lo, hi, rp.sample, rp.tensor_id), vec2<u32>(rp.seed_lo, rp.seed_hi));
    return vec2<u32>(i, w.x);
}

@compute @workgroup_size(256)
fn rademacher_fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let d = draw(wid, nwg, lid);
    if (d.x == 0xffffffffu) { return; }
    out[d.x] = select(1.0, -1.0, (d.y >> 31u) != 0u);
}

@compute @workgroup_size(256)
fn uniform_fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let d = draw(wid, nwg, lid);
    if (d.x == 0xffffffffu) { return; }
    out[d.x] = f32(d.y >> 8u) * 5.9604644775390625e-8;   // 2^-24
}

// Z[k][i] for k < samples, i < len (row-major samples x len): the Hutchinson probe vectors of
// samples sample .. sample + samples - 1 in one dispatch.
@compute @workgroup_size(256)
fn rademacher_samples(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let j = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (j >= rp.len * rp.samples) { return; }
    let k = j / rp.len;
    let i = j % rp.len;
    let w = philox4x32_10(vec4<u32>(i, 0u, rp.sample + k, rp.tensor_id), vec2<u32>(rp.seed_lo, rp.seed_hi));
    out[j] = select(1.0, -1.0, (w.x >> 31u) != 0u);
}

@compute @workgroup_size(64)
fn philox_raw(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (2u * j + 1u >= arrayLength(&raw_in)) { return; }
    let key = raw_in[2u * j + 1u];
    raw_out[j] = philox4x32_10(raw_in[2u * j], key.xy);
}
