//! CPU twin of `shaders/roots.wgsl` and of the GEMM/norm kernels the root algorithms use:
//! [`CpuMats`], the CPU backend of [`crate::roots::MatOps`] (f32 data; products accumulated in f64 and
//! rounded once, as `reference::gemm`), and the f64 eigendecomposition oracle (nalgebra's
//! `SymmetricEigen`) that the algorithms are held to.

use super::gemm::{gemm, gemm_addend};
use crate::error::{Error, Result};
use crate::kernels::gemm::GemmDesc;
use crate::roots::{
    check_copy_batch, check_copy_window, check_grow, check_reshape, check_same_size, Mat, MatOps, Scale,
};
use nalgebra::{DMatrix, SymmetricEigen};

/// The CPU backend: every batch a `Vec<f32>`.
///
/// ```
/// use gpuopt::reference::roots::CpuMats;
/// use gpuopt::roots::{MatOps, Scale};
/// let mut ops = CpuMats::default();
/// let x = ops.upload(&[1.0, 2.0, 3.0, 4.0], 1, 2, 2)?;
/// let out = ops.alloc(1, 2, 2)?;
/// ops.affine(out, Some(x), 2.0, Scale::One, 0.0, 1.0)?; // 2·X + I
/// assert_eq!(ops.read(out)?, vec![3.0, 4.0, 6.0, 9.0]);
/// # Ok::<(), gpuopt::Error>(())
/// ```
#[derive(Default)]
pub struct CpuMats {
    mats: Vec<((usize, usize, usize), Vec<f32>)>,
}

/// s^power as the shader's `scale_pow`: the common powers by division and sqrt, others by `powf`.
pub fn scale_pow(s: f32, power: f32) -> f32 {
    if power == 1.0 {
        s
    } else if power == -1.0 {
        1.0 / s
    } else if power == 0.5 {
        s.sqrt()
    } else if power == -0.5 {
        1.0 / s.sqrt()
    } else {
        s.powf(power)
    }
}

/// The shader's `dev`: |v − δ|, NaN and ±Inf reported as f32::MAX.
fn dev(v: f32, diagonal: bool) -> f32 {
    let a = if diagonal { v - 1.0 } else { v }.abs();
    if a <= f32::MAX {
        a
    } else {
        f32::MAX
    }
}

impl CpuMats {
    fn data(&self, m: Mat) -> &[f32] {
        &self.mats[m.0].1
    }

    /// The shader's `copy_region` over a box of `size` = [matrices, rows, cols]: matrix z of the box
    /// reads `src` from z·src_stride + src_off (stride 0 broadcasts one matrix) and writes `dst` from
    /// z·(dst's matrix size) + dst_off, rows at each one's own leading dimension.
    fn copy_box(&mut self, dst: Mat, dst_off: usize, src: Mat, src_off: usize, src_stride: usize, size: [usize; 3]) {
        let ((_, dr, dl), (_, _, sl)) = (self.shape(dst), self.shape(src));
        for z in 0..size[0] {
            for i in 0..size[1] {
                let (so, d0) = (z * src_stride + src_off + i * sl, z * dr * dl + dst_off + i * dl);
                let row = self.data(src)[so..so + size[2]].to_vec();
                self.mats[dst.0].1[d0..d0 + size[2]].copy_from_slice(&row);
            }
        }
    }
}

impl MatOps for CpuMats {
    fn alloc(&mut self, batch: usize, rows: usize, cols: usize) -> Result<Mat> {
        self.mats.push(((batch, rows, cols), vec![0.0; batch * rows * cols]));
        Ok(Mat(self.mats.len() - 1))
    }

    fn upload(&mut self, data: &[f32], batch: usize, rows: usize, cols: usize) -> Result<Mat> {
        if data.len() != batch * rows * cols {
            return Err(Error::Shape {
                what: "upload".into(),
                expected: vec![batch, rows, cols],
                got: vec![data.len()],
            });
        }
        self.mats.push(((batch, rows, cols), data.to_vec()));
        Ok(Mat(self.mats.len() - 1))
    }

    fn shape(&self, m: Mat) -> (usize, usize, usize) {
        self.mats[m.0].0
    }

    fn gemm(&mut self, desc: GemmDesc, a: Mat, b: Mat, c: Mat, addend: Option<Mat>) -> Result<()> {
        desc.check(self.data(a).len(), self.data(b).len(), self.data(c).len())?;
        let mut out = std::mem::take(&mut self.mats[c.0].1);
        match addend {
            Some(d) if d == c => gemm(&desc, self.data(a), self.data(b), &mut out),
            Some(d) => gemm_addend(&desc, self.data(a), self.data(b), &mut out, self.data(d)),
            None => gemm(&GemmDesc { beta: 0.0, ..desc }, self.data(a), self.data(b), &mut out),
        }
        if desc.symmetric {
            // The GPU computes the upper triangle and mirrors it: do the same.
            let n = desc.n;
            for z in 0..desc.batch {
                let m = &mut out[z * n * n..(z + 1) * n * n];
                for i in 0..n {
                    for j in 0..i {
                        m[i * n + j] = m[j * n + i];
                    }
                }
            }
        }
        self.mats[c.0].1 = out;
        Ok(())
    }

    fn affine(&mut self, out: Mat, x: Option<Mat>, alpha: f32, scale: Scale, beta: f32, gamma: f32) -> Result<()> {
        let (batch, rows, cols) = self.shape(out);
        let len = rows * cols;
        let alpha = if x.is_some() { alpha } else { 0.0 };
        let mut o = std::mem::take(&mut self.mats[out.0].1);
        for z in 0..batch {
            let mut s = alpha;
            match scale {
                Scale::One => {}
                Scale::Pow(m, p) => s *= scale_pow(self.data(m)[z], p),
                Scale::Ratio(num, den) => s *= self.data(num)[z] / (self.data(den)[z] + 1e-16),
                Scale::Clip(m, limit) => s /= (self.data(m)[z] / limit).max(1.0),
                Scale::Mask(m) => {
                    if self.data(m)[z] == 0.0 {
                        continue;
                    }
                }
                Scale::Finite(m) => {
                    // As the shader: skip unless d < MAX (a NaN flag also skips).
                    if self.data(m)[z].partial_cmp(&f32::MAX) != Some(std::cmp::Ordering::Less) {
                        continue;
                    }
                }
            }
            for i in 0..len {
                let mut v = 0.0;
                if alpha != 0.0 {
                    v = s * self.data(x.unwrap())[z * len + i];
                }
                if beta != 0.0 {
                    v += beta * o[z * len + i];
                }
                if i / cols == i % cols {
                    v += gamma;
                }
                o[z * len + i] = v;
            }
        }
        self.mats[out.0].1 = o;
        Ok(())
    }

    fn frobenius(&mut self, x: Mat, out: Mat) -> Result<()> {
        let (batch, rows, cols) = self.shape(x);
        let len = rows * cols;
        let norms: Vec<f32> =
            (0..batch).map(|z| super::newton_schulz::frobenius(&self.data(x)[z * len..(z + 1) * len])).collect();
        self.mats[out.0].1[..batch].copy_from_slice(&norms);
        Ok(())
    }

    fn max_dev(&mut self, x: Mat, out: Mat) -> Result<()> {
        let (batch, rows, cols) = self.shape(x);
        let len = rows * cols;
        for z in 0..batch {
            let m =
                (0..len).map(|i| dev(self.data(x)[z * len + i], i / cols == i % cols)).fold(0.0f32, |a, b| a.max(b));
            self.mats[out.0].1[z] = m;
        }
        Ok(())
    }

    fn solve(&mut self, m: Mat, rhs: Mat, status: Mat) -> Result<()> {
        let (batch, n, _) = self.shape(m);
        let k = self.shape(rhs).2;
        for z in 0..batch {
            let mut a = self.data(m)[z * n * n..(z + 1) * n * n].to_vec();
            let mut r = self.data(rhs)[z * n * k..(z + 1) * n * k].to_vec();
            let singular = gauss_jordan(&mut a, &mut r, n, k);
            self.mats[m.0].1[z * n * n..(z + 1) * n * n].copy_from_slice(&a);
            self.mats[rhs.0].1[z * n * k..(z + 1) * n * k].copy_from_slice(&r);
            self.mats[status.0].1[z] = singular as u32 as f32;
        }
        Ok(())
    }

    fn graft(&mut self, acc: Mat, g: Mat, out: Mat, decay: f32, weight: f32, eps: f32) -> Result<()> {
        for i in 0..self.data(g).len() {
            let gi = self.data(g)[i];
            let a = decay * self.data(acc)[i] + weight * gi * gi;
            self.mats[acc.0].1[i] = a;
            self.mats[out.0].1[i] = gi / (a.sqrt() + eps);
        }
        Ok(())
    }

    fn transpose(&mut self, x: Mat, out: Mat) -> Result<()> {
        let (b, r, c) = crate::roots::check_transpose(self, x, out)?;
        let mut o = std::mem::take(&mut self.mats[out.0].1);
        let xs = self.data(x);
        for z in 0..b {
            for i in 0..r {
                for j in 0..c {
                    o[z * r * c + j * r + i] = xs[z * r * c + i * c + j];
                }
            }
        }
        self.mats[out.0].1 = o;
        Ok(())
    }

    fn sign(&mut self, x: Mat, out: Mat) -> Result<()> {
        check_same_size(self, x, out, "sign")?;
        for i in 0..self.data(x).len() {
            let v = self.data(x)[i];
            // f32::signum gives 1 for +0: the shader's sign() gives 0.
            self.mats[out.0].1[i] = if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            };
        }
        Ok(())
    }

    fn copy_region(
        &mut self,
        dst: Mat,
        dst_at: (usize, usize),
        src: Mat,
        src_at: (usize, usize),
        h: usize,
        w: usize,
    ) -> Result<()> {
        let ((db, _, dl), (sb, sr, sl)) = (self.shape(dst), self.shape(src));
        // One source matrix is broadcast (stride 0) to every destination matrix.
        let src_stride = if sb == 1 { 0 } else { sr * sl };
        self.copy_box(dst, dst_at.0 * dl + dst_at.1, src, src_at.0 * sl + src_at.1, src_stride, [db, h, w]);
        Ok(())
    }

    fn copy_window(
        &mut self,
        dst: Mat,
        dst_at: [usize; 3],
        src: Mat,
        src_at: [usize; 3],
        size: [usize; 3],
    ) -> Result<()> {
        check_copy_window(self, (dst, dst_at), (src, src_at), size)?;
        let ((_, dr, dl), (_, sr, sl)) = (self.shape(dst), self.shape(src));
        let offset = |at: [usize; 3], r: usize, l: usize| at[0] * r * l + at[1] * l + at[2];
        self.copy_box(dst, offset(dst_at, dr, dl), src, offset(src_at, sr, sl), sr * sl, size);
        Ok(())
    }

    fn reshape(&mut self, m: Mat, batch: usize, rows: usize, cols: usize) -> Result<()> {
        check_reshape(self, m, (batch, rows, cols))?;
        self.mats[m.0].0 = (batch, rows, cols);
        Ok(())
    }

    fn invert_spd_blocks(&mut self, d: Mat, out: Mat, status: Mat) -> Result<()> {
        let (b, h, _) = self.shape(d);
        for z in 0..b {
            // [D | I], Gauss–Jordan without pivoting in the shader's order.
            let w = 2 * h;
            let mut a = vec![0.0f32; h * w];
            for i in 0..h {
                a[i * w..i * w + h].copy_from_slice(&self.data(d)[z * h * h + i * h..z * h * h + (i + 1) * h]);
                a[i * w + h + i] = 1.0;
            }
            let mut bad = false;
            for j in 0..h {
                let piv = a[j * w + j];
                bad |= !(f32::MIN_POSITIVE..=f32::MAX).contains(&piv);
                let fac: Vec<f32> = (0..h).map(|i| if i == j { 0.0 } else { a[i * w + j] }).collect();
                for c in 0..w {
                    a[j * w + c] /= piv;
                }
                for (i, &f) in fac.iter().enumerate() {
                    if f != 0.0 {
                        for c in 0..w {
                            a[i * w + c] -= f * a[j * w + c];
                        }
                    }
                }
            }
            for i in 0..h {
                let row: Vec<f32> = a[i * w + h..(i + 1) * w].to_vec();
                self.mats[out.0].1[z * h * h + i * h..z * h * h + (i + 1) * h].copy_from_slice(&row);
            }
            self.mats[status.0].1[z] = bad as u32 as f32;
        }
        Ok(())
    }

    fn fill_uniform(&mut self, out: Mat, seed: u64) -> Result<()> {
        let len = self.data(out).len();
        self.mats[out.0].1 = super::random::uniform(seed, 0, 0, 0, len);
        Ok(())
    }

    fn copy_batch(&mut self, dst: Mat, dst_z: usize, src: Mat, src_z: usize, count: usize) -> Result<()> {
        let len = check_copy_batch(self, (dst, dst_z), (src, src_z), count)?;
        let from = self.data(src)[src_z * len..(src_z + count) * len].to_vec();
        self.mats[dst.0].1[dst_z * len..(dst_z + count) * len].copy_from_slice(&from);
        Ok(())
    }

    fn grow(&mut self, mats: &[Mat], batch: usize) -> Result<()> {
        check_grow(self, mats, batch)?;
        for m in mats {
            let ((b, r, c), data) = &mut self.mats[m.0];
            *b = batch;
            data.resize(batch * *r * *c, 0.0);
        }
        Ok(())
    }

    fn read(&mut self, m: Mat) -> Result<Vec<f32>> {
        Ok(self.data(m).to_vec())
    }

    fn mark(&self) -> usize {
        self.mats.len()
    }

    fn release(&mut self, mark: usize) {
        self.mats.truncate(mark);
    }
}

/// The shader's Gauss–Jordan elimination with partial pivoting on [a | r] (a n×n, r n×k), in f32 and in
/// the same order; returns true when a pivot was zero or not finite.
pub fn gauss_jordan(a: &mut [f32], r: &mut [f32], n: usize, k: usize) -> bool {
    let mut singular = false;
    for j in 0..n {
        let mut p = j;
        let mut best = -1.0f32;
        for i in j..n {
            let v = a[i * n + j].abs();
            if v > best {
                best = v;
                p = i;
            }
        }
        let piv = a[p * n + j];
        // A subnormal pivot is singular, as in the shader (a GPU may flush it to 0).
        if !(f32::MIN_POSITIVE..=f32::MAX).contains(&piv.abs()) {
            singular = true;
        }
        let inv = 1.0 / piv;
        for c in j..n {
            let (x, y) = (a[j * n + c], a[p * n + c]);
            a[p * n + c] = x;
            a[j * n + c] = y * inv;
        }
        for c in 0..k {
            let (x, y) = (r[j * k + c], r[p * k + c]);
            r[p * k + c] = x;
            r[j * k + c] = y * inv;
        }
        let factors: Vec<f32> = (0..n).map(|i| if i == j { 0.0 } else { a[i * n + j] }).collect();
        for (i, &f) in factors.iter().enumerate() {
            if f == 0.0 {
                continue;
            }
            for c in j..n {
                a[i * n + c] -= f * a[j * n + c];
            }
            for c in 0..k {
                r[i * k + c] -= f * r[j * k + c];
            }
        }
    }
    singular
}

/// A symmetric positive definite n×n matrix with eigenvalues log-spaced from `top` down to
/// `top / cond` in a random orthonormal basis (the Q of a Gaussian matrix's QR), for tests and benches.
pub fn spd_matrix(n: usize, cond: f64, top: f64, seed: u64) -> Vec<f32> {
    let mut rng = crate::parity::TestRng::new(seed);
    let g = DMatrix::from_fn(n, n, |_, _| rng.normal() as f64);
    let q = g.qr().q();
    let lambda = (0..n).map(|i| top * cond.powf(-(i as f64) / (n.max(2) - 1) as f64));
    let a = &q * DMatrix::from_diagonal(&nalgebra::DVector::from_iterator(n, lambda)) * q.transpose();
    (0..n * n).map(|i| 0.5 * (a[(i / n, i % n)] + a[(i % n, i / n)]) as f32).collect()
}

/// The f64 eigendecomposition of the symmetric n×n matrix `a` (+ ridge·I): (eigenvalues, eigenvectors
/// as columns).
pub fn eigen(a: &[f32], n: usize, ridge: f64) -> (Vec<f64>, DMatrix<f64>) {
    let m = DMatrix::from_fn(n, n, |i, j| {
        // Symmetrise: the oracle must not depend on which triangle the caller rounded.
        0.5 * (a[i * n + j] as f64 + a[j * n + i] as f64) + if i == j { ridge } else { 0.0 }
    });
    let e = SymmetricEigen::new(m);
    (e.eigenvalues.iter().copied().collect(), e.eigenvectors)
}

/// V·diag(f(λ))·Vᵀ, row-major.
pub fn spectral(values: &[f64], vectors: &DMatrix<f64>, f: impl Fn(f64) -> f64) -> Vec<f64> {
    let n = values.len();
    let d = DMatrix::from_diagonal(&nalgebra::DVector::from_iterator(n, values.iter().map(|&l| f(l))));
    let m = vectors * d * vectors.transpose();
    (0..n * n).map(|i| m[(i / n, i % n)]).collect()
}

/// (A + ridge·I)^power of a symmetric positive definite n×n matrix, in f64 (the oracle).
///
/// ```
/// let y = gpuopt::reference::roots::oracle_power(&[4.0, 0.0, 0.0, 9.0], 2, 0.5, 0.0);
/// assert!((y[0] - 2.0).abs() < 1e-12 && (y[3] - 3.0).abs() < 1e-12 && y[1].abs() < 1e-12);
/// ```
pub fn oracle_power(a: &[f32], n: usize, power: f64, ridge: f64) -> Vec<f64> {
    let (values, vectors) = eigen(a, n, ridge);
    spectral(&values, &vectors, |l| l.powf(power))
}

/// The exact ∂L/∂A of L = ⟨C, A^{1/2}⟩ for symmetric C (the solution X of A^{1/2}·X + X·A^{1/2} = C):
/// in A's eigenbasis X̃_ij = C̃_ij / (√λ_i + √λ_j).
pub fn oracle_sqrt_backward(a: &[f32], c: &[f32], n: usize) -> Vec<f64> {
    let (values, v) = eigen(a, n, 0.0);
    let cm = DMatrix::from_fn(n, n, |i, j| c[i * n + j] as f64);
    let mut ct = v.transpose() * cm * &v;
    for i in 0..n {
        for j in 0..n {
            ct[(i, j)] /= values[i].sqrt() + values[j].sqrt();
        }
    }
    let x = &v * ct * v.transpose();
    (0..n * n).map(|i| x[(i / n, i % n)]).collect()
}
