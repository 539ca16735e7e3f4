//! ablate's own candle ops: convolution and pooling with fast, correct CPU kernels and tested backwards.
//!
//! candle 0.11's CPU convolution computes its input gradient with a direct transposed
//! convolution (~80 % of a training step) and runs grouped convolutions one group at a time;
//! its `max_pool2d` passes back 1/4 of the true gradient for 2x2 windows and cannot
//! back-propagate when kernel != stride. These ops replace both on CPU; on other devices
//! (CUDA) [`generic`] composes pooling and grouped convolution from candle's tensor ops, and
//! the rest falls back to candle's own kernels.

pub mod conv;
mod direct;
pub mod generic;
pub mod norm;
pub mod pool;

use candle_core::{CpuStorage, Layout, Result};

/// The contiguous f32 data behind a storage + layout, or an error naming the op.
pub(crate) fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s
        .as_slice::<f32>()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: only f32 tensors are supported, got a different dtype")))?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous (call .contiguous() first)"),
    }
}
