//! Philox-4x32-10 and the counter-based draws: the Random123 known answers on the CPU and on the GPU,
//! ALGORITHMS.md §6.1's Rademacher test vectors, and GPU == CPU streams over sizes that cross
//! workgroup and dispatch boundaries.

mod common;

use gpuopt::kernels::random::{fill, philox_raw, Draw};
use gpuopt::reference::random::{philox4x32_10, rademacher, uniform};
use gpuopt::Tensor;

/// Random123 `tests/kat_vectors` for philox4x32_10 (counter; key → output), as quoted in ALGORITHMS.md §6.1.
const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
    ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    ([u32::MAX; 4], [u32::MAX; 2], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    (
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
        [0xa4093822, 0x299f31d0],
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ),
];

#[test]
fn philox_known_answers_on_the_cpu() {
    for (c, k, want) in KAT {
        assert_eq!(philox4x32_10(c, k), want);
    }
}

#[test]
fn philox_known_answers_on_the_gpu() {
    let ctx = common::ctx();
    let pairs: Vec<([u32; 4], [u32; 2])> = KAT.iter().map(|(c, k, _)| (*c, *k)).collect();
    let got = philox_raw(&ctx, &pairs).unwrap();
    for ((_, _, want), got) in KAT.iter().zip(got) {
        assert_eq!(got, *want);
    }
    // And 4,096 pseudo-random (counter, key) pairs agree with the CPU, which checks the 16-bit
    // emulation of the high product word far beyond the three vectors.
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 32) as u32
    };
    let pairs: Vec<([u32; 4], [u32; 2])> =
        (0..4096).map(|_| ([next(), next(), next(), next()], [next(), next()])).collect();
    let got = philox_raw(&ctx, &pairs).unwrap();
    for ((c, k), g) in pairs.iter().zip(got) {
        assert_eq!(g, philox4x32_10(*c, *k));
    }
}

fn signs(v: &[f32]) -> String {
    v.iter().map(|&x| if x > 0.0 { '+' } else { '-' }).collect()
}

#[test]
fn rademacher_matches_the_specification_vectors() {
    // ALGORITHMS.md §6.1: seed 0, k = 0 / k = 1, and seed 42, k = 0, elements 0..15.
    let ctx = common::ctx();
    for (seed, k, want) in [(0u64, 0u32, "+-+--+--+----++-"), (0, 1, "---+--++---+++--"), (42, 0, "----++++-+-++++-")] {
        assert_eq!(signs(&rademacher(seed, k, 0, 0, 16)), want, "cpu seed {seed} k {k}");
        let t = Tensor::zeros(&ctx, &[16]).unwrap();
        fill(&ctx, &t, Draw::Rademacher, seed, k, 0, 0).unwrap();
        assert_eq!(signs(&t.to_vec(&ctx).unwrap()), want, "gpu seed {seed} k {k}");
    }
}

#[test]
fn gpu_and_cpu_streams_are_identical_across_boundaries() {
    let ctx = common::ctx_with(gpuopt::ContextOptions { max_workgroups_per_dim: Some(5), ..Default::default() });
    for (n, seed, k, tid, offset) in [
        (1, 7u64, 3u32, 2u32, 0u64),
        (255, u64::MAX, 9, 0, 0),
        (257, 1 << 40, 0, 5, 0),
        (5000, 3, 1, 1, (1u64 << 32) - 100),
    ] {
        for draw in [Draw::Rademacher, Draw::Uniform] {
            let t = Tensor::zeros(&ctx, &[n]).unwrap();
            fill(&ctx, &t, draw, seed, k, tid, offset).unwrap();
            let want = match draw {
                Draw::Rademacher => rademacher(seed, k, tid, offset, n),
                Draw::Uniform => uniform(seed, k, tid, offset, n),
            };
            assert_eq!(t.to_vec(&ctx).unwrap(), want, "{draw:?} n={n} seed={seed} offset={offset}");
        }
    }
    // Uniform draws lie in [0, 1) and look uniform (mean within 5 standard errors of 1/2).
    let u = uniform(11, 0, 0, 0, 100_000);
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = u.iter().map(|&x| x as f64).sum::<f64>() / u.len() as f64;
    assert!((mean - 0.5).abs() < 5.0 * (1.0f64 / 12.0 / 1e5).sqrt(), "mean {mean}");
}
