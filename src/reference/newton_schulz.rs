//! CPU twin of the Newton–Schulz family (`src/kernels/newton_schulz.rs`): the same steps, each product
//! rounded to f32 once (accumulated in f64 by `reference::gemm`), norms accumulated in f64.

use super::gemm::{gemm, gemm_addend};
use crate::error::{Error, Result};
use crate::kernels::gemm::GemmDesc;
use crate::kernels::newton_schulz::{polar_converged, NS_EPS};

/// Frobenius norm in f64, rounded to f32.
pub fn frobenius(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32
}

/// Transposes a rows×cols row-major matrix.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = x[i * cols + j];
        }
    }
    out
}

/// NS5 with coefficients (a, b, c) on b matrices of m×n (row-major, concatenated).
pub fn newton_schulz5(
    g: &[f32],
    b: usize,
    m: usize,
    n: usize,
    steps: usize,
    (ca, cb, cc): (f32, f32, f32),
) -> Vec<f32> {
    let transpose_in = m > n;
    let (r, c) = if transpose_in { (n, m) } else { (m, n) };
    let mut out = Vec::with_capacity(g.len());
    for z in 0..b {
        let gz = &g[z * m * n..(z + 1) * m * n];
        let norm = frobenius(gz);
        let scaled: Vec<f32> = gz.iter().map(|&v| v / (norm + NS_EPS)).collect();
        let mut x = if transpose_in { transpose(&scaled, m, n) } else { scaled };
        for _ in 0..steps {
            let mut a = vec![0.0; r * r];
            gemm(&GemmDesc { trans_b: true, ..GemmDesc::new(r, r, c) }, &x, &x, &mut a);
            let mut bm = vec![0.0; r * r];
            gemm_addend(&GemmDesc { alpha: cc, beta: cb, ..GemmDesc::new(r, r, r) }, &a, &a, &mut bm, &a);
            let mut next = vec![0.0; r * c];
            gemm_addend(&GemmDesc { alpha: 1.0, beta: ca, ..GemmDesc::new(r, c, r) }, &bm, &x, &mut next, &x);
            x = next;
        }
        out.extend(if transpose_in { transpose(&x, r, c) } else { x });
    }
    out
}

/// The cubic polar iteration with the stopping rule of ALGORITHMS.md §11.4; returns (Q, iterations).
pub fn polar(a: &[f32], m: usize, n: usize, max_iters: usize) -> Result<(Vec<f32>, usize)> {
    let transpose_in = m > n;
    let (r, c) = if transpose_in { (n, m) } else { (m, n) };
    let norm = frobenius(a);
    crate::kernels::newton_schulz::check_polar_norm(norm)?;
    // (5.4.1): X/‖X‖_F, no ε (which would swamp the norm of a matrix of tiny entries).
    let scaled: Vec<f32> = a.iter().map(|&v| v / norm).collect();
    let mut x = if transpose_in { transpose(&scaled, m, n) } else { scaled };
    let mut previous = f32::INFINITY;
    for k in 0..max_iters {
        let mut g = vec![0.0; r * r];
        gemm(&GemmDesc { trans_b: true, ..GemmDesc::new(r, r, c) }, &x, &x, &mut g);
        let mut next = vec![0.0; r * c];
        gemm_addend(&GemmDesc { alpha: -0.5, beta: 1.5, ..GemmDesc::new(r, c, r) }, &g, &x, &mut next, &x);
        let diff: Vec<f32> = next.iter().zip(&x).map(|(p, q)| p - q).collect();
        let d = frobenius(&diff);
        x = next;
        if polar_converged(d, previous, r) {
            return Ok((if transpose_in { transpose(&x, r, c) } else { x }, k + 1));
        }
        previous = d;
    }
    Err(Error::Invalid(format!("polar did not converge in {max_iters} iterations")))
}
