//! CPU twin of `shaders/gemm.wgsl`: the same product accumulated in f64 (an oracle: the shader's f32
//! sums are compared with it at a tolerance growing like sqrt(k)·ε, see `tests/gemm.rs`).

use crate::kernels::gemm::GemmDesc;

/// C\[z\] = α·op(A\[z\])·op(B\[z\]) + β·D\[z\] with a separate addend D (one matrix or `batch`).
pub fn gemm_addend(desc: &GemmDesc, a: &[f32], b: &[f32], c: &mut [f32], d: &[f32]) {
    let one = desc.m * desc.n;
    for z in 0..desc.batch {
        let dz = if d.len() == one { &d[..one] } else { &d[z * one..(z + 1) * one] };
        c[z * one..(z + 1) * one].copy_from_slice(dz);
    }
    gemm(desc, a, b, c);
}

/// C\[z\] = α·op(A\[z\])·op(B\[z\]) + β·C\[z\]; A and B hold `batch` matrices or one (broadcast).
pub fn gemm(d: &GemmDesc, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (m, n, k) = (d.m, d.n, d.k);
    let a_stride = if a.len() == m * k && d.batch > 1 { 0 } else { m * k };
    let b_stride = if b.len() == k * n && d.batch > 1 { 0 } else { k * n };
    for z in 0..d.batch {
        let (a, b) = (&a[z * a_stride..], &b[z * b_stride..]);
        let c = &mut c[z * m * n..(z + 1) * m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for l in 0..k {
                    let x = if d.trans_a { a[l * m + i] } else { a[i * k + l] };
                    let y = if d.trans_b { b[j * k + l] } else { b[l * n + j] };
                    s += x as f64 * y as f64;
                }
                let mut v = d.alpha as f64 * s;
                if d.beta != 0.0 {
                    v += d.beta as f64 * c[i * n + j] as f64;
                }
                c[i * n + j] = v as f32;
            }
        }
    }
}

/// Σ_l |op(A)_il|·|op(B)_lj| for every (z, i, j): the scale of the rounding error of C_ij.
pub fn abs_product(d: &GemmDesc, a: &[f32], b: &[f32]) -> Vec<f32> {
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let mut out = vec![0.0; d.m * d.n * d.batch];
    let unit = GemmDesc { alpha: 1.0, beta: 0.0, ..*d };
    gemm(&unit, &abs(a), &abs(b), &mut out);
    out
}
