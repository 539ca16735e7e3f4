//! Max and average pooling with kernel, stride and padding, as candle custom ops whose
//! backward is right: max-pool routes each output's gradient to its window's first argmax;
//! avg-pool spreads it evenly (PyTorch's `count_include_pad = true`: divisor kh * kw).

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, par_chunks_zeroed};

pub use super::params::{PoolKind, PoolParams};

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

/// For every output of one plane, the window's first argmax (flat index into the plane): the
/// plain window walk, kept as the reference the fast kernels are tested against.
#[cfg(test)]
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

/// [`argmax_plane`] for the common 2x2, stride-2, unpadded window, branch-free: the same
/// values and argmaxes (first maximum; NaN wins as there).
fn max_2x2_plane(x: &[f32], d: &Dims, o: &mut [f32], am: &mut [u32]) {
    for oy in 0..d.oh {
        let (r0, r1) = (2 * oy * d.w, (2 * oy + 1) * d.w);
        let (row0, row1) = (&x[r0..r0 + 2 * d.ow], &x[r1..r1 + 2 * d.ow]);
        let (o_row, am_row) = (&mut o[oy * d.ow..(oy + 1) * d.ow], &mut am[oy * d.ow..(oy + 1) * d.ow]);
        for ox in 0..d.ow {
            let mut best = (f32::NEG_INFINITY, r0 + 2 * ox);
            for (v, at) in [
                (row0[2 * ox], r0 + 2 * ox),
                (row0[2 * ox + 1], r0 + 2 * ox + 1),
                (row1[2 * ox], r1 + 2 * ox),
                (row1[2 * ox + 1], r1 + 2 * ox + 1),
            ] {
                if v > best.0 || v.is_nan() {
                    best = (v, at);
                }
            }
            o_row[ox] = best.0;
            am_row[ox] = best.1 as u32;
        }
    }
}

/// [`argmax_plane`] in two passes: the maximum (and its column) of each output's columns in
/// every input row, then the maximum of those over each output's rows. The same values and
/// argmaxes (the first maximum in row-major order; the last NaN, as there), with selects
/// instead of branches and the second pass vectorised over a row of outputs: the window walk
/// of ResNet's 3x3/2 stem pool took 3 % of a training step.
#[inline(always)]
fn max_plane_separable_body(p: &PoolParams, d: &Dims, x: &[f32], o: &mut [f32], am: &mut [u32]) {
    let mut row_max = vec![0f32; d.h * d.ow];
    let mut row_at = vec![0u32; d.h * d.ow];
    // Each row padded with -inf (never taken) to every window's full width, so that the
    // column pass is the same loop for every output, vectorisable over outputs.
    let (kw, sw, pw) = (p.kernel.1, p.stride.1, p.padding.1);
    let mut padded = vec![f32::NEG_INFINITY; (d.ow - 1) * sw + kw];
    // The padded row split into its `sw` phases (`phases[r][i] = padded[sw * i + r]`), so that
    // tap kx of every window is one contiguous run: phases[kx % sw][kx / sw..][..ow].
    let phase_len = d.ow + (kw - 1) / sw;
    let mut phases = vec![f32::NEG_INFINITY; sw * phase_len];
    for y in 0..d.h {
        let row = &x[y * d.w..(y + 1) * d.w];
        let n = d.w.min(padded.len() - pw);
        padded[pw..pw + n].copy_from_slice(&row[..n]);
        for (r, phase) in phases.chunks_mut(phase_len).enumerate() {
            for (v, &src) in phase.iter_mut().zip(padded[r..].iter().step_by(sw)) {
                *v = src;
            }
        }
        let (best, at) = (&mut row_max[y * d.ow..(y + 1) * d.ow], &mut row_at[y * d.ow..(y + 1) * d.ow]);
        row_pass(&phases, phase_len, kw, sw, best, at);
        // Padded column -> plane index. A window of only padding keeps its first in-bounds
        // column, as the window walk does.
        for (ox, a) in at.iter_mut().enumerate() {
            let first = (ox * sw).max(pw).min(pw + d.w - 1) as u32;
            let col = if *a == u32::MAX { first } else { *a };
            *a = (y * d.w) as u32 + col - pw as u32;
        }
    }
    for oy in 0..d.oh {
        let (y0, y1) = PoolParams::window(oy, p.kernel.0, p.stride.0, p.padding.0, d.h);
        let (o_row, am_row) = (&mut o[oy * d.ow..(oy + 1) * d.ow], &mut am[oy * d.ow..(oy + 1) * d.ow]);
        o_row.fill(f32::NEG_INFINITY);
        am_row.copy_from_slice(&row_at[y0 * d.ow..(y0 + 1) * d.ow]);
        for y in y0..y1 {
            let (vals, ats) = (&row_max[y * d.ow..(y + 1) * d.ow], &row_at[y * d.ow..(y + 1) * d.ow]);
            for (((best, at), &v), &i) in o_row.iter_mut().zip(am_row.iter_mut()).zip(vals).zip(ats) {
                let take = v > *best || v.is_nan();
                *best = if take { v } else { *best };
                *at = if take { i } else { *at };
            }
        }
    }
}

simd_dispatch!(
    /// [`max_plane_separable_body`] for this CPU.
    fn max_plane_separable(p: &PoolParams, d: &Dims, x: &[f32], o: &mut [f32], am: &mut [u32]) -> () = max_plane_separable_body
);

/// The column pass of [`max_plane_separable_body`]: `best[ox]`, `at[ox]` = the maximum of
/// `padded[ox * s .. ox * s + kw]` and its (padded) column, `u32::MAX` if none beats -inf,
/// reading the row's phases (`phase_len` each). Contiguous runs and selects: it vectorises.
#[inline(always)]
fn row_pass(phases: &[f32], phase_len: usize, kw: usize, s: usize, best: &mut [f32], at: &mut [u32]) {
    best.fill(f32::NEG_INFINITY);
    at.fill(u32::MAX);
    let ow = best.len();
    for kx in 0..kw {
        let start = (kx % s) * phase_len + kx / s;
        let cols = &phases[start..start + ow];
        for (ox, ((b, a), &v)) in best.iter_mut().zip(at.iter_mut()).zip(cols).enumerate() {
            let take = v > *b || v.is_nan();
            *b = if take { v } else { *b };
            *a = if take { (ox * s + kx) as u32 } else { *a };
        }
    }
}

/// Pooling forward: `(n, c, h, w) -> (n, c, oh, ow)`. Max-pool keeps each output's argmax
/// (index within its plane) for the backward pass, which then only scatters.
#[derive(Debug)]
pub struct Pool2d {
    params: PoolParams,
    argmax: OnceLock<Arc<Vec<u32>>>,
}

impl Pool2d {
    pub fn new(params: PoolParams) -> Self {
        Self { params, argmax: OnceLock::new() }
    }
}

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        "ablate-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = &self.params;
        let d = dims(p, l.shape())?;
        let x = f32_slice(self.name(), s, l)?;
        let (plane_in, plane_out) = (d.h * d.w, d.oh * d.ow);
        if plane_in > u32::MAX as usize {
            candle_core::bail!("pool: planes of more than 2^32 pixels are not supported");
        }
        // Zeroed in parallel (see par_chunks_zeroed): LeNet's first pool makes 6 M of each.
        let mut out: Vec<f32> = par_chunks_zeroed(d.planes * plane_out, plane_out, |_, _| {});
        let area = (p.kernel.0 * p.kernel.1) as f32;
        match p.kind {
            PoolKind::Max => {
                let mut argmax: Vec<u32> = par_chunks_zeroed(d.planes * plane_out, plane_out, |_, _| {});
                let isa = super::isa::Isa::current();
                let two_by_two = p.kernel == (2, 2) && p.stride == (2, 2) && p.padding == (0, 0);
                out.par_chunks_mut(plane_out).zip(argmax.par_chunks_mut(plane_out)).enumerate().for_each(
                    |(i, (o, am))| {
                        let xp = &x[i * plane_in..(i + 1) * plane_in];
                        if two_by_two {
                            max_2x2_plane(xp, &d, o, am);
                        } else {
                            max_plane_separable(isa, p, &d, xp, o, am);
                        }
                    },
                );
                let (n, c, _, _) = l.shape().dims4()?;
                super::trace::max_pool(&argmax, &[n, c, d.oh, d.ow]);
                // One op value serves one forward call (see `pool2d`): set once.
                let _ = self.argmax.set(Arc::new(argmax));
            }
            PoolKind::Avg => out.par_chunks_mut(plane_out).enumerate().for_each(|(i, o)| {
                let xp = &x[i * plane_in..(i + 1) * plane_in];
                for oy in 0..d.oh {
                    let (y0, y1) = PoolParams::window(oy, p.kernel.0, p.stride.0, p.padding.0, d.h);
                    for ox in 0..d.ow {
                        let (x0, x1) = PoolParams::window(ox, p.kernel.1, p.stride.1, p.padding.1, d.w);
                        let sum: f32 = (y0..y1).map(|y| xp[y * d.w + x0..y * d.w + x1].iter().sum::<f32>()).sum();
                        o[oy * d.ow + ox] = sum / area;
                    }
                }
            }),
        }
        let (n, c, _, _) = l.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((n, c, d.oh, d.ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let input = x.shape().clone();
        match (self.params.kind, self.argmax.get()) {
            (PoolKind::Max, Some(argmax)) => {
                Ok(Some(dy.apply_op1_no_bwd(&MaxUnpool { argmax: argmax.clone(), input })?))
            }
            (PoolKind::Max, None) => candle_core::bail!("max-pool backward before its forward ran"),
            (PoolKind::Avg, _) => Ok(Some(dy.apply_op1_no_bwd(&AvgPoolGrad { params: self.params, input })?)),
        }
    }
}

/// Max-pool backward from the forward's argmax: each output's gradient goes to its window's
/// first maximum. `dy (n, c, oh, ow) -> dx (n, c, h, w)`.
struct MaxUnpool {
    argmax: Arc<Vec<u32>>,
    input: Shape,
}

impl CustomOp1 for MaxUnpool {
    fn name(&self) -> &'static str {
        "ablate-max-unpool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = f32_slice(self.name(), s, l)?;
        let (n, c, h, w) = self.input.dims4()?;
        if dy.len() != self.argmax.len() {
            candle_core::bail!("max-unpool: gradient of {} values for {} argmaxes", dy.len(), self.argmax.len());
        }
        let plane_out = dy.len() / (n * c).max(1);
        let dx = par_chunks_zeroed(n * c * h * w, h * w, |i, g| {
            let span = i * plane_out..(i + 1) * plane_out;
            for (v, &at) in dy[span.clone()].iter().zip(&self.argmax[span]) {
                g[at as usize] += v;
            }
        });
        Ok((CpuStorage::F32(dx), self.input.clone()))
    }
}

/// Avg-pool backward: `dy (n, c, oh, ow) -> dx (n, c, h, w)`, each output's gradient spread
/// evenly over its window.
struct AvgPoolGrad {
    params: PoolParams,
    input: Shape,
}

impl CustomOp1 for AvgPoolGrad {
    fn name(&self) -> &'static str {
        "ablate-avg-pool-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = &self.params;
        let d = dims(p, &self.input)?;
        let dy = f32_slice(self.name(), s, l)?;
        let (plane_in, plane_out) = (d.h * d.w, d.oh * d.ow);
        let area = (p.kernel.0 * p.kernel.1) as f32;
        let dx = par_chunks_zeroed(d.planes * plane_in, plane_in, |i, g| {
            let dyp = &dy[i * plane_out..(i + 1) * plane_out];
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
        });
        Ok((CpuStorage::F32(dx), self.input.clone()))
    }
}

/// Pools `x (n, c, h, w)`: our kernels on CPU, candle ops composed to the same result
/// elsewhere ([`super::generic::pool2d`]; candle's own `max_pool2d` has no padding and a wrong
/// backward).
pub fn pool2d(x: &Tensor, p: PoolParams) -> Result<Tensor> {
    if x.device().is_cpu() { x.contiguous()?.apply_op1(Pool2d::new(p)) } else { super::generic::pool2d(x, p) }
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
    fn fast_2x2_max_pool_equals_the_general_window_walk() {
        let p = PoolParams { kind: PoolKind::Max, kernel: (2, 2), stride: (2, 2), padding: (0, 0) };
        let (h, w) = (7, 9);
        let d = dims(&p, &Shape::from((1, 1, h, w))).unwrap();
        // Ties (rounded values) and a NaN: the same winner as the general loop.
        let mut x: Vec<f32> = (0..h * w).map(|i| ((i * 37 % 11) as f32 / 3.0).round()).collect();
        x[20] = f32::NAN;
        let (mut o1, mut a1) = (vec![0f32; d.oh * d.ow], vec![0u32; d.oh * d.ow]);
        max_2x2_plane(&x, &d, &mut o1, &mut a1);
        let (mut o2, mut a2) = (vec![0f32; d.oh * d.ow], vec![0u32; d.oh * d.ow]);
        argmax_plane(&p, &d, &x, |oi, at, v| {
            o2[oi] = v;
            a2[oi] = at as u32;
        });
        assert_eq!(a1, a2);
        assert_eq!(format!("{o1:?}"), format!("{o2:?}"));
    }

    #[test]
    fn separable_max_pool_equals_the_general_window_walk() {
        // Ties (rounded values), NaNs, padding, overlapping and gapped windows.
        for (k, s, pad) in [(3, 2, 1), (3, 1, 1), (2, 3, 0), (3, 3, 1), (1, 1, 0), (4, 2, 2)] {
            let p = PoolParams { kind: PoolKind::Max, kernel: (k, k + 1), stride: (s, s), padding: (pad, pad) };
            let (h, w) = (9, 11);
            let d = dims(&p, &Shape::from((1, 1, h, w))).unwrap();
            let mut x: Vec<f32> = (0..h * w).map(|i| ((i * 37 % 11) as f32 / 3.0).round()).collect();
            x[20] = f32::NAN;
            x[23] = f32::NAN;
            x[60] = f32::NEG_INFINITY;
            let (mut o2, mut a2) = (vec![0f32; d.oh * d.ow], vec![0u32; d.oh * d.ow]);
            argmax_plane(&p, &d, &x, |oi, at, v| {
                o2[oi] = v;
                a2[oi] = at as u32;
            });
            // Every SIMD build this CPU runs.
            for level in crate::ops::isa::available() {
                let isa = crate::ops::isa::with_cap(level, crate::ops::isa::Isa::current);
                assert_eq!(isa.level(), level);
                let (mut o1, mut a1) = (vec![0f32; d.oh * d.ow], vec![0u32; d.oh * d.ow]);
                max_plane_separable(isa, &p, &d, &x, &mut o1, &mut a1);
                assert_eq!(a1, a2, "{p:?}, {level:?}");
                assert_eq!(format!("{o1:?}"), format!("{o2:?}"), "{p:?}, {level:?}");
            }
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

    /// The composed ops of `generic` (the GPU path) equal the CPU kernels, forward and backward.
    #[test]
    fn pooling_matches_the_cpu_kernels() {
        // (kind, kernel, stride, padding, h, w)
        let cases = [
            (PoolKind::Max, (3, 3), (2, 2), (1, 1), 9, 8),
            (PoolKind::Max, (2, 2), (2, 2), (0, 0), 6, 7),
            (PoolKind::Max, (3, 2), (1, 2), (1, 0), 5, 6),
            (PoolKind::Avg, (2, 2), (2, 2), (0, 0), 8, 8),
            (PoolKind::Avg, (3, 3), (2, 2), (1, 1), 7, 9),
        ];
        for (i, (kind, kernel, stride, padding, h, w)) in cases.into_iter().enumerate() {
            let p = PoolParams { kind, kernel, stride, padding };
            let x = Var::from_tensor(&crate::ops::testing::uniform(&[2, 3, h, w], i as u64, -1.0, 1.0)).unwrap();
            let ours = crate::ops::generic::pool2d(&x, p).unwrap();
            let cpu = pool2d(&x, p).unwrap();
            crate::ops::testing::assert_close(&ours, &cpu, &format!("case {i} forward"));
            let probe = crate::ops::testing::uniform(ours.dims(), 100 + i as u64, -1.0, 1.0);
            let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (cpu * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            crate::ops::testing::assert_close(g1.get(&x).unwrap(), g2.get(&x).unwrap(), &format!("case {i} gradient"));
        }
    }
}
