//! Philox-4x32-10 in Rust, bit-identical to `shaders/shared/philox.wgsl`, and the CPU twins of
//! `shaders/random.wgsl`'s draws (ALGORITHMS.md §6.1, §11.5).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox-4x32-10 of `counter` under `key`.
///
/// ```
/// // Random123's known answer for a zero counter and key (ALGORITHMS.md §6.1).
/// let out = gpuopt::reference::random::philox4x32_10([0; 4], [0; 2]);
/// assert_eq!(out, [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
/// ```
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for r in 0..10 {
        if r > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = M0 as u64 * c0 as u64;
        let p1 = M1 as u64 * c2 as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// Output word 0 for element `i` of sample `k` of tensor `tensor_id` under `seed` (§11.5 layout).
pub fn word0(seed: u64, k: u32, tensor_id: u32, i: u64) -> u32 {
    philox4x32_10([i as u32, (i >> 32) as u32, k, tensor_id], [seed as u32, (seed >> 32) as u32])[0]
}

/// ±1 draws for elements `offset .. offset + len`.
pub fn rademacher(seed: u64, k: u32, tensor_id: u32, offset: u64, len: usize) -> Vec<f32> {
    (0..len as u64).map(|i| if word0(seed, k, tensor_id, offset + i) >> 31 == 0 { 1.0 } else { -1.0 }).collect()
}

/// Uniform draws in [0, 1) with 24 random bits, elements `offset .. offset + len`.
pub fn uniform(seed: u64, k: u32, tensor_id: u32, offset: u64, len: usize) -> Vec<f32> {
    (0..len as u64).map(|i| (word0(seed, k, tensor_id, offset + i) >> 8) as f32 * (1.0 / 16_777_216.0)).collect()
}
