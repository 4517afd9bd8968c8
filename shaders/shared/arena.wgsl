// Shared prelude of every multi-tensor ("arena") update kernel.
// Keep in sync with src/kernels/arena.rs (`Hyper`, `Block`, binding numbers).
//
// Parameters, gradients and optimizer state live in flat arenas of vec4<f32>. Each tensor starts on a
// 64-element (256-byte) boundary and its padding is zero, so whole vec4s can be updated: every update
// rule in gpuopt maps (p = 0, g = 0, state = 0) to 0, so padding stays zero.
// The arena is cut into blocks of at most 4 * WG_SIZE vec4s that never straddle two tensors; one
// workgroup updates one block (each invocation up to 4 vec4s, WG_SIZE apart, so reads stay
// coalesced), and the block says which tensor and which parameter group it is in.

const WG_SIZE: u32 = 256u;
const MAX_GROUPS: u32 = 16u;

// One parameter group's per-step scalars, precomputed on the host in f64 and rounded to f32.
// The meaning of c1..c11 is per optimizer (see the kernel's header comment).
struct Hyper {
    lr: f32,
    decay: f32,   // 1 - lr * weight_decay (DW-B factor), or 1 where the decay is L2 or absent
    beta1: f32,
    omb1: f32,    // 1 - beta1, rounded once from f64 as the references' Python floats are
    beta2: f32,
    omb2: f32,    // 1 - beta2
    eps: f32,
    c1: f32, c2: f32, c3: f32, c4: f32, c5: f32, c6: f32, c7: f32, c8: f32, c9: f32,
}

struct Hypers {
    g: array<Hyper, MAX_GROUPS>,
}

struct Block {
    start: u32,   // first vec4 of the block in the arena
    len: u32,     // number of vec4s (<= WG_SIZE)
    tensor: u32,  // tensor index in the arena's offset table
    group: u32,   // parameter group
}

@group(0) @binding(0) var<uniform> hp: Hypers;
@group(0) @binding(1) var<storage, read> blocks: array<Block>;
@group(0) @binding(2) var<storage, read> skip: array<u32>;
@group(0) @binding(3) var<storage, read_write> p: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> g: array<vec4<f32>>;

// The workgroup's block index on a 2-D grid (x fastest), so more than 65,535 blocks can be dispatched.
fn block_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// The workgroup's block, or an empty block when there is none (past the end, or the step is skipped
// by the non-finite guard). Each invocation then updates vec4s start + lid, start + lid + WG_SIZE, ...
fn arena_block(wid: vec3<u32>, nwg: vec3<u32>) -> Block {
    let bi = block_index(wid, nwg);
    if (bi >= arrayLength(&blocks) || skip[0] != 0u) {
        return Block(0u, 0u, 0u, 0u);
    }
    return blocks[bi];
}
