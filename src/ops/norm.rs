//! Per-channel ops on `(n, c, ...)` tensors: batch normalisation, bias add and ReLU, as candle
//! custom ops with one-pass backwards.
//!
//! candle builds these from broadcast ops whose backward reduces the gradient over the
//! broadcast dims (`sum_keepdim` over n, h, w): a strided reduction that took a third of a
//! ResNeXt training step (perf). Here each reduction is one contiguous pass per channel.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, par_chunks_written};

/// `(n, c, s)` view of a shape whose dim 1 is the channel (`s` = product of the rest).
fn ncs(shape: &Shape) -> Result<(usize, usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        candle_core::bail!("per-channel op: expected (n, c, ...), got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// Per-channel sums of `f(channel)([inputs[0][i], ...])` over every sample and position of
/// `(n, c, s)` inputs (`f(channel)` once per row: the per-element function then only holds
/// that channel's constants, and vectorises). Each row is summed in 16 independent f32 lanes
/// (a single running sum is one dependent add per element, which the compiler may not
/// reorder into vectors), the lanes and rows folded in f64.
fn channel_sums<const M: usize, const K: usize, G: Fn([f32; M]) -> [f32; K]>(
    (n, c, s): (usize, usize, usize),
    inputs: [&[f32]; M],
    f: impl Fn(usize) -> G + Sync,
) -> Vec<[f64; K]> {
    const LANES: usize = 16;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = [0f64; K];
            let f = f(ch);
            for b in 0..n {
                let start = (b * c + ch) * s;
                let rows: [&[f32]; M] = inputs.map(|a| &a[start..start + s]);
                let mut lanes = [[0f32; LANES]; K];
                let full = s / LANES * LANES;
                for j0 in (0..full).step_by(LANES) {
                    let chunk: [&[f32]; M] = rows.map(|r| &r[j0..j0 + LANES]);
                    for j in 0..LANES {
                        let v = f(std::array::from_fn(|m| chunk[m][j]));
                        for k in 0..K {
                            lanes[k][j] += v[k];
                        }
                    }
                }
                #[allow(clippy::needless_range_loop)] // j indexes all M rows at once
                for j in full..s {
                    let v = f(std::array::from_fn(|m| rows[m][j]));
                    for k in 0..K {
                        acc[k] += v[k] as f64;
                    }
                }
                for k in 0..K {
                    acc[k] += lanes[k].iter().map(|&v| v as f64).sum::<f64>();
                }
            }
            acc
        })
        .collect()
}

/// Batch statistics `(2, c)`: mean and biased variance of each channel (no gradient).
pub struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "ablate-channel-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        let (n, c, sp) = ncs(l.shape())?;
        let m = (n * sp) as f64;
        let sums = channel_sums((n, c, sp), [x], |_| |[v]| [v]);
        let mean: Vec<f64> = sums.iter().map(|v| v[0] / m).collect();
        // Second pass around the mean: no catastrophic cancellation for large means.
        let mean32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
        let sq = channel_sums((n, c, sp), [x], |ch| {
            let mean = mean32[ch];
            move |[v]| [(v - mean) * (v - mean)]
        });
        let mut out: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
        out.extend(sq.iter().map(|v| (v[0] / m) as f32));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` for inputs `(x, stats (2, c), affine (2, c))`
/// with `affine = [weight; bias]`. With `batch_stats`, `stats` are `x`'s own batch statistics
/// and the backward includes their dependence on `x` (training); otherwise they are constants
/// (evaluation with running statistics). With an activation (`fused`), `max(y, 0)` or
/// `min(max(y, 0), 6)` in the same pass, and the backward masks `dy` where the normalised value
/// was not inside `(0, cap)` (recomputed from `x`, the same arithmetic as the forward): the
/// ReLU (ReLU6) after a BatchNorm costs no pass of its own.
pub struct BatchNormOp {
    pub eps: f64,
    pub batch_stats: bool,
    pub fused: Fused,
}

/// The activation a BatchNorm computes in its own pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    None,
    /// `max(y, 0)`.
    Relu,
    /// `min(max(y, 0), 6)` (MobileNet's): the gradient passes where `0 < y < 6`, as
    /// PyTorch's `hardtanh_backward`.
    Relu6,
}

impl Fused {
    /// The upper bound the output is clamped to (the lower is 0).
    fn cap(self) -> f32 {
        if self == Fused::Relu6 { 6.0 } else { f32::INFINITY }
    }
}

/// Per-channel `(scale, shift)` with `y = x * scale + shift`.
fn scale_shift(stats: &[f32], affine: &[f32], c: usize, eps: f64) -> Vec<(f32, f32)> {
    (0..c)
        .map(|ch| {
            let inv = 1.0 / (stats[c + ch] as f64 + eps).sqrt();
            let scale = affine[ch] as f64 * inv;
            (scale as f32, (affine[c + ch] as f64 - stats[ch] as f64 * scale) as f32)
        })
        .collect()
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "ablate-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let stats = f32_slice(self.name(), s2, l2)?;
        let affine = f32_slice(self.name(), s3, l3)?;
        let (_, c, sp) = ncs(l1.shape())?;
        let ss = scale_shift(stats, affine, c, self.eps);
        let (floor, cap) =
            if self.fused == Fused::None { (f32::NEG_INFINITY, f32::INFINITY) } else { (0.0, self.fused.cap()) };
        let y = super::map_rows(x, sp, |r| {
            let (scale, shift) = ss[r % c];
            move |x: f32| (x * scale + shift).max(floor).min(cap)
        });
        if self.fused == Fused::Relu {
            super::trace::relu(&y, l1.dims());
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        stats: &Tensor,
        affine: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let numel = x.elem_count();
        let c = stats.dim(1)?;
        let packed = Tensor::cat(&[stats, affine], 0)?; // (4, c): mean, var, weight, bias
        let out = x.apply_op3_no_bwd(
            &dy.contiguous()?,
            &packed,
            &BatchNormGrad { eps: self.eps, batch_stats: self.batch_stats, fused: self.fused },
        )?;
        let dx = out.narrow(0, 0, numel)?.reshape(x.shape())?;
        let d_affine = out.narrow(0, numel, 2 * c)?.reshape((2, c))?;
        Ok((x.track_op().then_some(dx), None, Some(d_affine)))
    }
}

/// Backward of [`BatchNormOp`]: `(x, dy, [mean; var; weight; bias]) -> [dx (flat); d_weight;
/// d_bias]`.
struct BatchNormGrad {
    eps: f64,
    batch_stats: bool,
    fused: Fused,
}

impl CustomOp3 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "ablate-batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let dy = f32_slice(self.name(), s2, l2)?;
        let p = f32_slice(self.name(), s3, l3)?;
        let (n, c, sp) = ncs(l1.shape())?;
        let isa = super::isa::Isa::current();
        let m = (n * sp) as f64;
        let inv: Vec<f64> = (0..c).map(|ch| 1.0 / (p[c + ch] as f64 + self.eps).sqrt()).collect();
        // With a fused activation, dy only where the forward's x * scale + shift was inside
        // (0, cap); without, (0, 1, inf): always inside. One branch-free loop either way.
        let cap = self.fused.cap();
        let mask: Vec<(f32, f32, f32)> = if self.fused == Fused::None {
            vec![(0.0, 1.0, f32::INFINITY); c]
        } else {
            scale_shift(&p[..2 * c], &p[2 * c..4 * c], c, self.eps).into_iter().map(|(a, b)| (a, b, cap)).collect()
        };
        // sum(dy) and sum(dy * xhat) per channel, xhat = (x - mean) * inv
        let sums: Vec<[f64; 2]> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut acc = [0f64; 2];
                for b in 0..n {
                    let r = (b * c + ch) * sp..(b * c + ch + 1) * sp;
                    let s = masked_sums(isa, &x[r.clone()], &dy[r], mask[ch], p[ch]);
                    acc = [acc[0] + s[0], acc[1] + s[1]];
                }
                [acc[0], acc[1] * inv[ch]]
            })
            .collect();
        // dx = w * inv / m * (m * dy - sum_dy - xhat * sum_dy_xhat) with batch statistics,
        // dx = w * inv * dy with constant ones.
        let coef: Vec<(f32, f32, f32, f32)> = (0..c)
            .map(|ch| {
                let k = p[2 * c + ch] as f64 * inv[ch];
                if self.batch_stats {
                    let (sd, sdx) = (sums[ch][0] / m, sums[ch][1] / m);
                    (k as f32, (-k * sd) as f32, (-k * sdx * inv[ch]) as f32, p[ch])
                } else {
                    (k as f32, 0.0, 0.0, p[ch])
                }
            })
            .collect();
        // dx in chunks of one sample, then the parameters' gradients (zeros here, set below).
        let per_sample = |b: usize, dxb: &mut [MaybeUninit<f32>]| {
            let Some(xb) = x.get(b * c * sp..(b + 1) * c * sp) else {
                dxb.iter_mut().for_each(|v| {
                    v.write(0.0);
                });
                return;
            };
            let dyb = &dy[b * c * sp..(b + 1) * c * sp];
            for (ch, (&coef, &mask)) in coef.iter().zip(&mask).enumerate() {
                let r = ch * sp..(ch + 1) * sp;
                masked_dx(isa, &xb[r.clone()], &dyb[r.clone()], &mut dxb[r], mask, coef);
            }
        };
        // SAFETY: a sample's chunk is c rows of sp, each written by masked_dx (which asserts
        // that it covers them); the chunks past the batch are zeroed.
        let mut out = unsafe { par_chunks_written(x.len() + 2 * c, c * sp, per_sample) };
        let dparams = &mut out[x.len()..];
        for ch in 0..c {
            dparams[ch] = sums[ch][1] as f32;
            dparams[c + ch] = sums[ch][0] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * c)))
    }
}

/// `g = dy` where `0 < x * scale + shift < cap`, else 0; returns `[sum(g), sum(g * (x - mean))]`
/// over one row, in 16 independent lanes folded in f64.
#[inline(always)]
fn masked_sums_body(x: &[f32], dy: &[f32], (scale, shift, cap): (f32, f32, f32), mean: f32) -> [f64; 2] {
    const LANES: usize = 16;
    let (mut s0, mut s1) = ([0f32; LANES], [0f32; LANES]);
    let (xc, gc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
    let (xr, gr) = (xc.remainder(), gc.remainder());
    for (xs, gs) in xc.zip(gc) {
        for j in 0..LANES {
            let v = xs[j] * scale + shift;
            let g = if v > 0.0 && v < cap { gs[j] } else { 0.0 };
            s0[j] += g;
            s1[j] += g * (xs[j] - mean);
        }
    }
    let mut acc = [s0.iter().map(|&v| v as f64).sum(), s1.iter().map(|&v| v as f64).sum()];
    for (&x, &g) in xr.iter().zip(gr) {
        let v = x * scale + shift;
        let g = if v > 0.0 && v < cap { g } else { 0.0 };
        acc[0] += g as f64;
        acc[1] += (g * (x - mean)) as f64;
    }
    acc
}

simd_dispatch!(
    /// [`masked_sums_body`] for this CPU.
    fn masked_sums(x: &[f32], dy: &[f32], mask: (f32, f32, f32), mean: f32) -> [f64; 2] = masked_sums_body
);

/// `dx = k * g + a + b * (x - mean)` over one row, `g` masked as in [`masked_sums_body`].
#[inline(always)]
fn masked_dx_body(
    x: &[f32],
    dy: &[f32],
    dx: &mut [MaybeUninit<f32>],
    (scale, shift, cap): (f32, f32, f32),
    (k, a, b, mean): (f32, f32, f32, f32),
) {
    assert!(x.len() == dx.len() && dy.len() == dx.len(), "masked_dx: lengths differ");
    for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
        let v = x * scale + shift;
        let g = if v > 0.0 && v < cap { g } else { 0.0 };
        d.write(k * g + a + b * (x - mean));
    }
}

simd_dispatch!(
    /// [`masked_dx_body`] for this CPU.
    fn masked_dx(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>], mask: (f32, f32, f32), coef: (f32, f32, f32, f32)) -> () = masked_dx_body
);

/// `y = x + bias[c]` for `x (n, c, ...)`, `bias (c)`; backward: `dx = dy`, `dbias = sum of dy
/// per channel`.
pub struct ChannelBias;

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "ablate-channel-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let b = f32_slice(self.name(), s2, l2)?;
        let (_, c, sp) = ncs(l1.shape())?;
        if b.len() != c {
            candle_core::bail!("channel bias: {} values for {c} channels of {:?}", b.len(), l1.dims());
        }
        let mut y = x.to_vec();
        y.par_chunks_mut(c * sp).for_each(|yb| {
            for (ch, &bias) in b.iter().enumerate() {
                yb[ch * sp..(ch + 1) * sp].iter_mut().for_each(|v| *v += bias);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _b: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = dy.contiguous()?.apply_op1_no_bwd(&ChannelSum)?;
        Ok((x.track_op().then(|| dy.clone()), Some(db)))
    }
}

/// `(n, c, ...) -> (c)`: the sum over everything but the channel.
struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "ablate-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        let dims = ncs(l.shape())?;
        let sums = channel_sums(dims, [x], |_| |[v]| [v]);
        Ok((CpuStorage::F32(sums.iter().map(|v| v[0] as f32).collect()), Shape::from(dims.1)))
    }
}

/// `max(x, 0)` with a one-pass backward from the output (`dx = dy` where `y > 0`).
pub struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "ablate-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        let y = super::map_rows(x, 1 << 16, |_| |x: f32| x.max(0.0));
        super::trace::relu(&y, l.dims());
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&dy.contiguous()?, &ReluGrad)?))
    }
}

/// `min(max(x, 0), 6)` with a one-pass backward from the output (`dx = dy` where `0 < y < 6`).
pub struct Relu6;

impl CustomOp1 for Relu6 {
    fn name(&self) -> &'static str {
        "ablate-relu6"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        let y = super::map_rows(x, 1 << 16, |_| |x: f32| x.clamp(0.0, 6.0));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&dy.contiguous()?, &Relu6Grad)?))
    }
}

/// `(y, dy) -> dy * (0 < y < 6)`.
struct Relu6Grad;

impl CustomOp2 for Relu6Grad {
    fn name(&self) -> &'static str {
        "ablate-relu6-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(self.name(), s1, l1)?;
        let dy = f32_slice(self.name(), s2, l2)?;
        let dx = super::map2(y, dy, |y, g| if y > 0.0 && y < 6.0 { g } else { 0.0 });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `(y, dy) -> dy * (y > 0)`.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "ablate-relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(self.name(), s1, l1)?;
        let dy = f32_slice(self.name(), s2, l2)?;
        let dx = super::map2(y, dy, |y, g| if y > 0.0 { g } else { 0.0 });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `max(a + b, 0)` (a residual block's output) in one pass; backward: `dy * (y > 0)` for
/// both inputs, one tensor.
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "ablate-add-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let a = f32_slice(self.name(), s1, l1)?;
        let b = f32_slice(self.name(), s2, l2)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("add_relu: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let y = super::map2(a, b, |a, b| (a + b).max(0.0));
        super::trace::relu(&y, l1.dims());
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&dy.contiguous()?, &ReluGrad)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// `relu(a + b)`: one fused op on CPU, candle's elsewhere.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == candle_core::DType::F32 {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        (a + b)?.relu()
    }
}

/// ReLU6: our op on CPU (f32), candle's clamp elsewhere.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Relu6)
    } else {
        x.clamp(0f32, 6f32)
    }
}

/// ReLU: our op on CPU, candle's elsewhere.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() { x.contiguous()?.apply_op1(Relu) } else { x.relu() }
}

/// Adds a per-channel bias to `(n, c, ...)`: our op on CPU, a broadcast add elsewhere.
pub fn channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op2(bias, ChannelBias)
    } else {
        let mut shape = vec![1; x.rank()];
        shape[1] = bias.dim(0)?;
        x.broadcast_add(&bias.reshape(shape)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Var};

    fn seeded(shape: &[usize], seed: u64) -> Tensor {
        crate::ops::testing::uniform(shape, seed, -2.0, 3.0)
    }

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale));
        assert!(worst < 1e-4, "{what}: relative difference {worst}");
    }

    /// Batch norm written with candle's ops: the reference for the fused op.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, stats: Option<&Tensor>) -> Tensor {
        let c = x.dim(1).unwrap();
        let shape: Vec<usize> = (0..x.rank()).map(|i| if i == 1 { c } else { 1 }).collect();
        let (mean, var) = match stats {
            Some(s) => (
                s.get(0).unwrap().reshape(shape.as_slice()).unwrap(),
                s.get(1).unwrap().reshape(shape.as_slice()).unwrap(),
            ),
            None => {
                let flat = x.transpose(0, 1).unwrap().contiguous().unwrap().reshape((c, ())).unwrap();
                let mean = flat.mean_keepdim(D::Minus1).unwrap();
                let var = flat.broadcast_sub(&mean).unwrap().sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                (mean.reshape(shape.as_slice()).unwrap(), var.reshape(shape.as_slice()).unwrap())
            }
        };
        let inv = (var + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
        x.broadcast_sub(&mean)
            .unwrap()
            .broadcast_mul(&inv)
            .unwrap()
            .broadcast_mul(&w.reshape(shape.as_slice()).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape(shape.as_slice()).unwrap())
            .unwrap()
    }

    #[test]
    fn fused_batch_norm_matches_candle_ops_in_both_modes() {
        for shape in [vec![4, 3, 5, 6], vec![7, 5]] {
            let c = shape[1];
            let x = Var::from_tensor(&seeded(&shape, 1)).unwrap();
            let w = Var::from_tensor(&seeded(&[c], 2)).unwrap();
            // Shifted up so that some outputs pass 6 (the ReLU6's cap) and some stay below 0.
            let b = Var::from_tensor(&(seeded(&[c], 3) + 2.5).unwrap()).unwrap();
            let probe = seeded(&shape, 4);
            let running =
                Tensor::stack(&[seeded(&[c], 5), (seeded(&[c], 6).abs().unwrap() + 0.5).unwrap()], 0).unwrap();
            for train in [true, false] {
                let stats = if train { x.detach().apply_op1_no_bwd(&ChannelStats).unwrap() } else { running.clone() };
                let affine = Tensor::stack(&[w.as_tensor(), b.as_tensor()], 0).unwrap();
                for fused in [Fused::None, Fused::Relu, Fused::Relu6] {
                    let op = BatchNormOp { eps: 1e-5, batch_stats: train, fused };
                    let ours = x.apply_op3(&stats, &affine, op).unwrap();
                    let theirs = reference(&x, &w, &b, (!train).then_some(&running));
                    let theirs = match fused {
                        Fused::None => theirs,
                        Fused::Relu => theirs.relu().unwrap(),
                        Fused::Relu6 => {
                            let v = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                            assert!(v.iter().any(|&v| v > 6.0) && v.iter().any(|&v| v < 0.0), "clipped at both ends");
                            theirs.clamp(0f32, 6f32).unwrap()
                        }
                    };
                    close(&ours, &theirs, "forward");
                    let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
                        close(
                            g1.get(v).unwrap(),
                            g2.get(v).unwrap(),
                            &format!("{name} gradient, train {train}, {fused:?}, {shape:?}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn channel_bias_and_relu_match_candle() {
        let x = Var::from_tensor(&seeded(&[3, 4, 5, 2], 7)).unwrap();
        let b = Var::from_tensor(&seeded(&[4], 8)).unwrap();
        let probe = seeded(&[3, 4, 5, 2], 9);
        let ours = relu(&channel_bias(&x, &b).unwrap()).unwrap();
        let theirs = x.broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap()).unwrap().relu().unwrap();
        close(&ours, &theirs, "forward");
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        close(g1.get(&x).unwrap(), g2.get(&x).unwrap(), "x gradient");
        close(g1.get(&b).unwrap(), g2.get(&b).unwrap(), "bias gradient");
    }

    #[test]
    fn channel_bias_of_the_wrong_length_is_refused() {
        let x = seeded(&[2, 4, 3, 3], 1);
        let err = channel_bias(&x, &seeded(&[3], 2)).unwrap_err().to_string();
        assert!(err.contains("3 values for 4 channels"), "{err}");
    }

    #[test]
    fn add_relu_matches_candle() {
        let a = Var::from_tensor(&seeded(&[3, 4, 5, 2], 10)).unwrap();
        let b = Var::from_tensor(&seeded(&[3, 4, 5, 2], 11)).unwrap();
        let probe = seeded(&[3, 4, 5, 2], 12);
        let ours = add_relu(&a, &b).unwrap();
        let theirs = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
        close(&ours, &theirs, "forward");
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        close(g1.get(&a).unwrap(), g2.get(&a).unwrap(), "a gradient");
        close(g1.get(&b).unwrap(), g2.get(&b).unwrap(), "b gradient");
        // Both inputs the same tensor (x + x): both contributions summed.
        let g = add_relu(&a, &a).unwrap().sum_all().unwrap().backward().unwrap();
        let twice = (a.as_tensor() + a.as_tensor()).unwrap().relu().unwrap().sum_all().unwrap().backward().unwrap();
        close(g.get(&a).unwrap(), twice.get(&a).unwrap(), "x + x gradient");
    }
}
