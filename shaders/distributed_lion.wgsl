// Distributed Lion (ALGORITHMS.md §4.6): N workers share x; worker i keeps its momentum m_i.
//   worker (4.6.2-4.6.3): delta_i <- sign(beta1*m_i + (1-beta1)*g_i) in {-1, 0, +1};  m_i <- beta2*m_i + (1-beta2)*g_i
//   server (4.6.4):       MaVo: Delta <- sign(sum_i delta_i);  Avg: Delta <- (1/N) * sum_i delta_i
//   all    (4.6.5):       x <- (1 - lr*wd)*x - lr*Delta
// CPU twin: src/reference/distributed_lion.rs. Host side: src/optim/distributed_lion.rs.
//
// Packing (§4.6(e)): a worker's delta is one vec2<u32> per 32-element word w, bit j <-> element 32w + j;
// .x is the "non-zero" plane, .y the "negative" plane (a 0 is a 0: no vote, never +1). MaVo's Delta
// has the same layout (a tie, possible with even N, gives 0: only the decay acts). Avg's Delta is the
// vote count sum_i delta_i as an 8-bit two's complement number per element, four per u32 (byte k of
// word q of w <-> element 32w + 4q + k), so N <= 127; the division by N happens in the update.
//
// Layouts: g and m are worker-major, each worker's vector padded with zeros to a multiple of 32
// elements (words * 8 vec4s); a zero element never votes and its x stays 0, so the padding is inert.
//
// Two dispatches a step, one invocation per 32-element word in each: `dlion_compress` for all workers
// at once, then the server's tally (`dlion_vote_apply`, `dlion_average_apply`), which also applies
// Delta to x, since on one GPU the server and the workers share the parameters (Delta is still
// written out: it is what would be broadcast). An invocation walks its word's eight vec4s; the four
// bits of vec4 k are nibble k of the word. Measured on lavapipe (4 workers x 1M): one invocation per
// vec4 with the nibbles ORed through workgroup memory cost 20 ms for the compression against 7-12 ms
// per word, and gained nothing in the tally; on GPUs the eight loads of a word share cache sectors,
// so no byte is fetched twice.

struct DlionParams {
    words: u32,     // 32-element words per worker
    workers: u32,   // N
    _pad0: u32,
    _pad1: u32,
    lr: f32,
    decay: f32,     // 1 - lr * weight_decay
    beta1: f32,
    omb1: f32,      // 1 - beta1 (rounded once from f64 on the host)
    beta2: f32,
    omb2: f32,
    _pad2: f32,
    _pad3: f32,
}

@group(0) @binding(0) var<uniform> dp: DlionParams;
@group(0) @binding(1) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> signs: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> agg: array<u32>;
@group(0) @binding(5) var<storage, read_write> x: array<vec4<f32>>;

fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// The (non-zero, negative) bits of the four elements of c, shifted to the vec4's nibble. Explicit
// comparisons: a NaN (kept out by the host) would not vote either way.
fn nibbles(c: vec4<f32>, shift: u32) -> vec2<u32> {
    let weights = vec4<u32>(1u, 2u, 4u, 8u);
    let pos = select(vec4<u32>(0u), weights, c > vec4<f32>(0.0));
    let neg = select(vec4<u32>(0u), weights, c < vec4<f32>(0.0));
    let nz = pos | neg;
    return vec2<u32>((nz.x | nz.y | nz.z | nz.w) << shift, (neg.x | neg.y | neg.z | neg.w) << shift);
}

// (4.6.2-4.6.3) for every worker: invocation j owns word j of the worker-major g and m.
@compute @workgroup_size(256)
fn dlion_compress(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let j = thread_index(wid, nwg, lid);   // worker * words + word
    if (j >= dp.words * dp.workers) { return; }
    var word = vec2<u32>(0u);
    for (var k = 0u; k < 8u; k = k + 1u) {
        let i = j * 8u + k;
        let mv = m[i];
        let gv = g[i];
        let c = dp.beta1 * mv + dp.omb1 * gv;
        m[i] = dp.beta2 * mv + dp.omb2 * gv;
        word = word | nibbles(c, 4u * k);
    }
    signs[j] = word;
}

// sum_i delta_i for the four elements of vec4 v (delta = nz - 2 * neg: the negative plane is set only
// where the non-zero one is).
fn tally(v: u32) -> vec4<i32> {
    let w = v / 8u;
    let lanes = vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(4u * (v % 8u));
    var count = vec4<i32>(0);
    for (var i = 0u; i < dp.workers; i = i + 1u) {
        let s = signs[i * dp.words + w];
        let nz = (vec4<u32>(s.x) >> lanes) & vec4<u32>(1u);
        let neg = (vec4<u32>(s.y) >> lanes) & vec4<u32>(1u);
        count = count + vec4<i32>(nz) - 2 * vec4<i32>(neg);
    }
    return count;
}

// (4.6.4) MaVo and (4.6.5): Delta = sign(count), packed like a worker's delta; x <- decay*x - lr*Delta.
@compute @workgroup_size(256)
fn dlion_vote_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let w = thread_index(wid, nwg, lid);
    if (w >= dp.words) { return; }
    var word = vec2<u32>(0u);
    for (var k = 0u; k < 8u; k = k + 1u) {
        let v = 8u * w + k;
        let d = vec4<f32>(sign(tally(v)));
        x[v] = dp.decay * x[v] - dp.lr * d;
        word = word | nibbles(d, 4u * k);
    }
    agg[2u * w] = word.x;
    agg[2u * w + 1u] = word.y;
}

// (4.6.4) Avg and (4.6.5): the counts as bytes (vec4 v's four counts are u32 v of agg; the host caps
// N at 127); x <- decay*x - lr*(count/N).
@compute @workgroup_size(256)
fn dlion_average_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let w = thread_index(wid, nwg, lid);
    if (w >= dp.words) { return; }
    for (var k = 0u; k < 8u; k = k + 1u) {
        let v = 8u * w + k;
        let count = tally(v);
        let b = bitcast<vec4<u32>>(count) & vec4<u32>(0xffu);
        agg[v] = b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
        x[v] = dp.decay * x[v] - dp.lr * (vec4<f32>(count) / f32(dp.workers));
    }
}
