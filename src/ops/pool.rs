//! Max and average pooling with kernel, stride and padding, as candle custom ops whose
//! backward is right: max-pool routes each output's gradient to its window's first argmax;
//! avg-pool spreads it evenly (PyTorch's `count_include_pad = true`: divisor kh * kw).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;

/// Which reduction a pooling window applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

/// Window geometry, square or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolParams {
    pub kind: PoolKind,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl PoolParams {
    /// Output size `(oh, ow)` for an input of `(h, w)` (floor mode, as PyTorch's default), or
    /// `None` when the window does not fit.
    pub fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let side = |i: usize, k: usize, s: usize, p: usize| (i + 2 * p >= k && s > 0).then(|| (i + 2 * p - k) / s + 1);
        Some((
            side(h, self.kernel.0, self.stride.0, self.padding.0)?,
            side(w, self.kernel.1, self.stride.1, self.padding.1)?,
        ))
    }

    /// Input rows/cols `[lo, hi)` covered by output index `o` along one axis.
    fn window(o: usize, k: usize, s: usize, p: usize, len: usize) -> (usize, usize) {
        let start = (o * s) as isize - p as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + k as isize).max(0) as usize).min(len);
        (lo, hi)
    }
}

struct Dims {
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

fn dims(p: &PoolParams, shape: &Shape) -> Result<Dims> {
    let (n, c, h, w) = shape.dims4()?;
    let Some((oh, ow)) = p.out_size(h, w) else {
        candle_core::bail!("pool: kernel {:?} with padding {:?} does not fit input {h}x{w}", p.kernel, p.padding);
    };
    if p.padding.0 * 2 > p.kernel.0 || p.padding.1 * 2 > p.kernel.1 {
        candle_core::bail!("pool: padding {:?} must be at most half the kernel {:?}", p.padding, p.kernel);
    }
    Ok(Dims { planes: n * c, h, w, oh, ow })
}

/// For every output of one plane, the window's first argmax (flat index into the plane).
fn argmax_plane(p: &PoolParams, d: &Dims, x: &[f32], mut visit: impl FnMut(usize, usize, f32)) {
    for oy in 0..d.oh {
        let (y0, y1) = PoolParams::window(oy, p.kernel.0, p.stride.0, p.padding.0, d.h);
        for ox in 0..d.ow {
            let (x0, x1) = PoolParams::window(ox, p.kernel.1, p.stride.1, p.padding.1, d.w);
            let mut best = (y0 * d.w + x0, f32::NEG_INFINITY);
            for y in y0..y1 {
                for (i, &v) in x[y * d.w + x0..y * d.w + x1].iter().enumerate() {
                    // `>` keeps the first maximum; NaN propagates as PyTorch's does.
                    if v > best.1 || v.is_nan() {
                        best = (y * d.w + x0 + i, v);
                    }
                }
            }
            visit(oy * d.ow + ox, best.0, best.1);
        }
    }
}

/// Pooling forward: `(n, c, h, w) -> (n, c, oh, ow)`.
#[derive(Debug, Clone, Copy)]
pub struct Pool2d(pub PoolParams);

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        "ablate-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let d = dims(p, l.shape())?;
        let x = f32_slice(self.name(), s, l)?;
        let (plane_in, plane_out) = (d.h * d.w, d.oh * d.ow);
        let mut out = vec![0f32; d.planes * plane_out];
        let area = (p.kernel.0 * p.kernel.1) as f32;
        out.par_chunks_mut(plane_out).enumerate().for_each(|(i, o)| {
            let xp = &x[i * plane_in..(i + 1) * plane_in];
            match p.kind {
                PoolKind::Max => argmax_plane(p, &d, xp, |oi, _, v| o[oi] = v),
                PoolKind::Avg => {
                    for oy in 0..d.oh {
                        let (y0, y1) = PoolParams::window(oy, p.kernel.0, p.stride.0, p.padding.0, d.h);
                        for ox in 0..d.ow {
                            let (x0, x1) = PoolParams::window(ox, p.kernel.1, p.stride.1, p.padding.1, d.w);
                            let sum: f32 = (y0..y1).map(|y| xp[y * d.w + x0..y * d.w + x1].iter().sum::<f32>()).sum();
                            o[oy * d.ow + ox] = sum / area;
                        }
                    }
                }
            }
        });
        let (n, c, _, _) = l.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((n, c, d.oh, d.ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &Pool2dGrad(self.0))?))
    }
}

/// Pooling backward: `(x, dy) -> dx`. Max-pool needs `x` to find each window's argmax again.
struct Pool2dGrad(PoolParams);

impl CustomOp2 for Pool2dGrad {
    fn name(&self) -> &'static str {
        "ablate-pool2d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let d = dims(p, l1.shape())?;
        let x = f32_slice(self.name(), s1, l1)?;
        let dy = f32_slice(self.name(), s2, l2)?;
        let (plane_in, plane_out) = (d.h * d.w, d.oh * d.ow);
        let mut dx = vec![0f32; d.planes * plane_in];
        let area = (p.kernel.0 * p.kernel.1) as f32;
        dx.par_chunks_mut(plane_in).enumerate().for_each(|(i, g)| {
            let dyp = &dy[i * plane_out..(i + 1) * plane_out];
            match p.kind {
                PoolKind::Max => {
                    let xp = &x[i * plane_in..(i + 1) * plane_in];
                    argmax_plane(p, &d, xp, |oi, at, _| g[at] += dyp[oi]);
                }
                PoolKind::Avg => {
                    for oy in 0..d.oh {
                        let (y0, y1) = PoolParams::window(oy, p.kernel.0, p.stride.0, p.padding.0, d.h);
                        for ox in 0..d.ow {
                            let (x0, x1) = PoolParams::window(ox, p.kernel.1, p.stride.1, p.padding.1, d.w);
                            let share = dyp[oy * d.ow + ox] / area;
                            for y in y0..y1 {
                                g[y * d.w + x0..y * d.w + x1].iter_mut().for_each(|v| *v += share);
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Pools `x (n, c, h, w)`: our kernels on CPU, candle ops composed to the same result
/// elsewhere ([`super::generic::pool2d`]; candle's own `max_pool2d` has no padding and a wrong
/// backward).
pub fn pool2d(x: &Tensor, p: PoolParams) -> Result<Tensor> {
    if x.device().is_cpu() { x.contiguous()?.apply_op1(Pool2d(p)) } else { super::generic::pool2d(x, p) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Central finite differences of `sum(pool(x) * probe)` against the op's backward.
    fn check_gradient(p: PoolParams, shape: &[usize]) {
        let n: usize = shape.iter().product();
        // Distinct values, so every max is unique and the loss is smooth at x.
        let vals: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1009) as f32 / 101.0).collect();
        let x = Var::from_vec(vals.clone(), shape, &Device::Cpu).unwrap();
        let out = pool2d(&x, p).unwrap();
        let probe_vals: Vec<f32> = (0..out.elem_count()).map(|i| 1.0 + (i % 5) as f32 * 0.25).collect();
        let probe = Tensor::from_vec(probe_vals, out.shape(), &Device::Cpu).unwrap();
        let probe_f64: Vec<f64> =
            probe.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&v| v as f64).collect();
        // The loss is summed in f64 on the host so rounding stays far below the tolerance.
        let loss = |v: &[f32]| -> f64 {
            let t = Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap();
            let y = pool2d(&t, p).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            y.iter().zip(&probe_f64).map(|(&a, b)| a as f64 * b).sum()
        };
        let grads = (out * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let analytic = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let eps = 1e-3f32;
        for i in 0..n {
            let (mut hi, mut lo) = (vals.clone(), vals.clone());
            hi[i] += eps;
            lo[i] -= eps;
            let numeric = (loss(&hi) - loss(&lo)) / (2.0 * eps as f64);
            assert!(
                (numeric - analytic[i] as f64).abs() < 1e-2,
                "{p:?} element {i}: numeric {numeric} analytic {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        // 2x2/2 (where candle's backward passes back 1/4) and ResNet's 3x3/2 padded stem pool.
        for (k, s, pad) in [(2, 2, 0), (3, 2, 1), (3, 1, 1)] {
            let p = PoolParams { kind: PoolKind::Max, kernel: (k, k), stride: (s, s), padding: (pad, pad) };
            check_gradient(p, &[2, 2, 7, 6]);
        }
    }

    #[test]
    fn avg_pool_gradient_matches_finite_differences() {
        for (k, s, pad) in [(2, 2, 0), (3, 2, 1)] {
            let p = PoolParams { kind: PoolKind::Avg, kernel: (k, k), stride: (s, s), padding: (pad, pad) };
            check_gradient(p, &[1, 3, 6, 7]);
        }
    }

    #[test]
    fn padded_max_pool_forward_matches_hand_computation() {
        // torch.nn.functional.max_pool2d(torch.arange(16.).view(1,1,4,4), 3, 2, 1)
        //   -> [[5., 7.], [13., 15.]]
        let x = Tensor::arange(0f32, 16f32, &Device::Cpu).unwrap().reshape((1, 1, 4, 4)).unwrap();
        let p = PoolParams { kind: PoolKind::Max, kernel: (3, 3), stride: (2, 2), padding: (1, 1) };
        let y = pool2d(&x, p).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, vec![5., 7., 13., 15.]);
        // torch.nn.functional.avg_pool2d(same, 3, 2, 1) -> [[1.1111, 2.6667], [5.6667, 10.0000]]
        let p = PoolParams { kind: PoolKind::Avg, ..p };
        let y = pool2d(&x, p).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expect = [10.0 / 9.0, 24.0 / 9.0, 51.0 / 9.0, 90.0 / 9.0];
        for (a, b) in y.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
    }
}
