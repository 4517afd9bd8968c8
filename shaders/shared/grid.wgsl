// Small helpers of the per-tensor passes (Muon, REG/RACS, DASGO, the MLP).

// The flat index of an invocation of a 256-wide workgroup on a 2-D grid (x, then y rows of x).
fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// The chunk a workgroup (x, y, w) of a chunk grid takes (src/kernels/newton_schulz.rs chunk_grid):
// x + w * (grid x), so one matrix or tensor (wid.y) may have more chunks than a grid dimension
// holds workgroups. From workgroup values only: an early return on it keeps control uniform.
fn grid_chunk(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.z * nwg.x;
}

// torch's lerp(a, b, w): a + w·(b − a) for w < 0.5, else b − (b − a)·(1 − w) (exact at both ends).
fn lerp_torch(a: f32, b: f32, w: f32) -> f32 {
    if (w < 0.5) { return a + w * (b - a); }
    return b - (b - a) * (1.0 - w);
}

// lerp_torch on four values with one weight.
fn lerp_torch4(a: vec4<f32>, b: vec4<f32>, w: f32) -> vec4<f32> {
    if (w < 0.5) { return a + w * (b - a); }
    return b - (b - a) * (1.0 - w);
}
