//! CPU twin of `shaders/distributed_lion.wgsl` (Distributed Lion, ALGORITHMS.md §4.6), with the same
//! bit layout, so packed signs and aggregates compare bit for bit: a worker's δ and MaVo's Δ are two
//! u32 per 32-element word (non-zero plane, negative plane; bit j ↔ element 32w + j), Avg's Δ is one
//! signed byte per element (byte k of u32 q of word w ↔ element 32w + 4q + k).

use crate::kernels::distributed_lion::DlionParams;

/// Number of 32-element words for `n` elements.
pub fn words(n: usize) -> usize {
    n.div_ceil(32)
}

/// (4.6.2–4.6.3) for one worker: δ packed, m updated in place (f32, the shader's order).
pub fn compress(h: &DlionParams, g: &[f32], m: &mut [f32]) -> Vec<u32> {
    let mut out = vec![0u32; 2 * words(g.len())];
    for (i, (&gi, mi)) in g.iter().zip(m.iter_mut()).enumerate() {
        let c = h.beta1 * *mi + h.omb1 * gi;
        *mi = h.beta2 * *mi + h.omb2 * gi;
        let bit = 1u32 << (i % 32);
        if c > 0.0 {
            out[2 * (i / 32)] |= bit;
        }
        if c < 0.0 {
            out[2 * (i / 32)] |= bit;
            out[2 * (i / 32) + 1] |= bit;
        }
    }
    out
}

/// δ_j ∈ {−1, 0, 1} of element `j` from packed planes.
pub fn unpack(packed: &[u32], j: usize) -> i32 {
    let (nz, neg) = (packed[2 * (j / 32)] >> (j % 32) & 1, packed[2 * (j / 32) + 1] >> (j % 32) & 1);
    match (nz, neg) {
        (0, _) => 0,
        (_, 0) => 1,
        _ => -1,
    }
}

/// Σ_i δ_i per element (n elements).
pub fn counts(signs: &[Vec<u32>], n: usize) -> Vec<i32> {
    (0..n).map(|j| signs.iter().map(|s| unpack(s, j)).sum()).collect()
}

/// (4.6.4) MaVo: Δ = sign(Σ_i δ_i), packed like δ.
pub fn vote(signs: &[Vec<u32>], n: usize) -> Vec<u32> {
    let mut out = vec![0u32; 2 * words(n)];
    for (j, c) in counts(signs, n).into_iter().enumerate() {
        let bit = 1u32 << (j % 32);
        if c != 0 {
            out[2 * (j / 32)] |= bit;
        }
        if c < 0 {
            out[2 * (j / 32) + 1] |= bit;
        }
    }
    out
}

/// (4.6.4) Avg: the counts Σ_i δ_i as signed bytes (the division by N is in [`apply_average`]).
pub fn average(signs: &[Vec<u32>], n: usize) -> Vec<u32> {
    let mut out = vec![0u32; 8 * words(n)];
    for (j, c) in counts(signs, n).into_iter().enumerate() {
        out[j / 4] |= (c as u8 as u32) << (8 * (j % 4));
    }
    out
}

/// (4.6.5) with MaVo's Δ.
pub fn apply_vote(h: &DlionParams, x: &mut [f32], delta: &[u32]) {
    for (j, xj) in x.iter_mut().enumerate() {
        *xj = h.decay * *xj - h.lr * unpack(delta, j) as f32;
    }
}

/// (4.6.5) with Avg's counts: Δ = count / N.
pub fn apply_average(h: &DlionParams, x: &mut [f32], counts: &[u32]) {
    for (j, xj) in x.iter_mut().enumerate() {
        let c = (counts[j / 4] >> (8 * (j % 4))) as u8 as i8;
        *xj = h.decay * *xj - h.lr * (c as f32 / h.workers as f32);
    }
}
