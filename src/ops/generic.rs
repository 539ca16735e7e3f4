//! Pooling and grouped convolution composed from candle's own tensor ops, so they run (and
//! back-propagate through candle's autograd) on any device: the CUDA path of `ops::pool`
//! and `ops::conv`, whose tests hold these against the CPU kernels.
//!
//! Both gather a window's taps as strided views of the padded input, one `(n, c, oh, ow)`
//! tensor per tap. Pooling reduces over the taps; a grouped convolution stacks them into
//! im2col columns and multiplies every group's weights with its columns in one batched matmul
//! (candle 0.11's own `conv2d` with `groups > 1` runs one convolution per group instead, so a
//! 64-group conv would cost 64 launches).

use candle_core::{DType, Result, Tensor};

use super::params::{ConvParams, PoolKind, PoolParams};

/// `x` padded along `dim` with `before` and `after` entries of `value`.
fn pad_dim(x: &Tensor, dim: usize, before: usize, after: usize, value: f64) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let block = |len: usize| -> Result<Tensor> {
        let mut shape = x.dims().to_vec();
        shape[dim] = len;
        Tensor::full(value, shape, x.device())?.to_dtype(x.dtype())
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::cat(&parts, dim)
}

/// Entries `start, start + step, ...` (`count` of them) along `dim`; `x` must hold at least
/// `start + step * count` entries there.
fn every(x: &Tensor, dim: usize, start: usize, count: usize, step: usize) -> Result<Tensor> {
    let x = x.narrow(dim, start, step * count)?;
    if step == 1 {
        return Ok(x);
    }
    let mut shape = x.dims().to_vec();
    shape.splice(dim..=dim, [count, step]);
    x.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Window geometry along one axis.
#[derive(Clone, Copy)]
struct Axis {
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
}

impl Axis {
    fn out(&self, len: usize) -> Result<usize> {
        let span = self.dilation * (self.kernel - 1) + 1;
        if len + 2 * self.padding < span || self.stride == 0 {
            candle_core::bail!("window of {span} (padding {}) does not fit {len}", self.padding);
        }
        Ok((len + 2 * self.padding - span) / self.stride + 1)
    }

    /// Padding after the input so every tap's strided view fits: `padding` plus what `every`
    /// needs past the last window.
    fn pad_after(&self, len: usize, out: usize) -> usize {
        let needed = self.dilation * (self.kernel - 1) + self.stride * out;
        needed.saturating_sub(len + self.padding)
    }
}

/// The padded input's taps, row-major over the window: `kh * kw` tensors `(n, c, oh, ow)`.
fn taps(x: &Tensor, ay: Axis, ax: Axis, value: f64) -> Result<(Vec<Tensor>, (usize, usize))> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = (ay.out(h)?, ax.out(w)?);
    let xp = pad_dim(x, 2, ay.padding, ay.pad_after(h, oh), value)?;
    let xp = pad_dim(&xp, 3, ax.padding, ax.pad_after(w, ow), value)?;
    let mut out = Vec::with_capacity(ay.kernel * ax.kernel);
    for i in 0..ay.kernel {
        let rows = every(&xp, 2, i * ay.dilation, oh, ay.stride)?;
        for j in 0..ax.kernel {
            out.push(every(&rows, 3, j * ax.dilation, ow, ax.stride)?);
        }
    }
    Ok((out, (oh, ow)))
}

/// Max- or average-pooling of `x (n, c, h, w)` with padding. Max-pool pads with -inf; its
/// gradient goes to every element equal to the window's maximum (candle's `max` backward),
/// which differs from the CPU kernel's first-argmax only on exact ties. Avg-pool divides by
/// the full window, padding included (PyTorch's `count_include_pad = true`).
pub fn pool2d(x: &Tensor, p: PoolParams) -> Result<Tensor> {
    let axis = |k, s, pad| Axis { kernel: k, stride: s, padding: pad, dilation: 1 };
    let (ay, ax) = (axis(p.kernel.0, p.stride.0, p.padding.0), axis(p.kernel.1, p.stride.1, p.padding.1));
    match p.kind {
        PoolKind::Max => {
            let (taps, _) = taps(x, ay, ax, f64::NEG_INFINITY)?;
            Tensor::stack(&taps, 2)?.max(2)
        }
        PoolKind::Avg => {
            let (taps, _) = taps(x, ay, ax, 0.0)?;
            let sum = taps.iter().skip(1).try_fold(taps[0].clone(), |acc, t| acc + t)?;
            sum * (1.0 / (p.kernel.0 * p.kernel.1) as f64)
        }
    }
}

/// Convolution of `x (n, c, h, w)` with `weight (o, c/groups, kh, kw)` as im2col columns and
/// one batched matmul over groups and images: `(g, o/g, c/g*kh*kw) x (n, g, c/g*kh*kw, oh*ow)`.
pub fn conv2d(x: &Tensor, weight: &Tensor, p: ConvParams) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let (o, cg, kh, kw) = weight.dims4()?;
    let g = p.groups;
    if g == 0 || c != cg * g || o % g != 0 {
        candle_core::bail!("conv2d: input channels {c}, weight {:?} and groups {g} do not match", weight.dims());
    }
    let axis = |k| Axis { kernel: k, stride: p.stride, padding: p.padding, dilation: p.dilation };
    let (taps, (oh, ow)) = taps(x, axis(kh), axis(kw), 0.0)?;
    // (n, c, kh*kw, oh, ow): within a group, column index = channel * kh*kw + tap, as the
    // weight's (c/g, kh, kw) flattens.
    let cols = Tensor::stack(&taps, 2)?.reshape((n, g, cg * kh * kw, oh * ow))?;
    let w = weight.reshape((g, o / g, cg * kh * kw))?;
    w.broadcast_matmul(&cols)?.reshape((n, o, oh, ow))
}

/// Runs `f` in `dtype` (bf16 autocast): inputs converted, the result back in `x`'s dtype.
pub fn in_dtype(
    dtype: Option<DType>,
    x: &Tensor,
    w: &Tensor,
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match dtype {
        Some(dt) if dt != x.dtype() => f(&x.to_dtype(dt)?, &w.to_dtype(dt)?)?.to_dtype(x.dtype()),
        _ => f(x, w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(shape: &[usize], seed: u64) -> Tensor {
        crate::ops::testing::uniform(shape, seed, -1.0, 1.0)
    }

    #[test]
    fn bf16_autocast_stays_close_to_f32() {
        let x = seeded(&[2, 8, 6, 6], 1);
        let w = seeded(&[8, 2, 3, 3], 2);
        let p = ConvParams { groups: 4, padding: 1, ..Default::default() };
        let f32_out = conv2d(&x, &w, p).unwrap();
        let bf16_out = in_dtype(Some(DType::BF16), &x, &w, |x, w| conv2d(x, w, p)).unwrap();
        assert_eq!(bf16_out.dtype(), DType::F32);
        let diff = (&f32_out - &bf16_out).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // bf16 keeps 8 bits of mantissa: errors of ~1 % of the values (|y| up to ~3 here).
        assert!(diff > 0.0 && diff < 0.1, "bf16 vs f32: {diff}");
    }
}
