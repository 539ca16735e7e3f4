//! `batch_norm`: batch normalisation over channels (or features), with PyTorch's semantics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use candle_core::{D, DType, Result, Tensor, Var};
use candle_nn::ModuleT;

use super::{Built, Walk};
use crate::model::builder::Builder;
use crate::ops::norm::{BatchNormOp, ChannelStats, Fused, relu, relu6};

/// Batch statistics and running-stat updates (momentum 0.1, unbiased variance) in training,
/// running statistics in evaluation; optionally followed by a ReLU in the same pass.
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    batches_tracked: Arc<AtomicI64>,
    momentum: f64,
    eps: f64,
    /// The ReLU (ReLU6) that follows, computed in the same pass (and one backward pass).
    fused: Fused,
    /// Frozen (`model.freeze`): running statistics in training too, and left as they are.
    frozen: Arc<AtomicBool>,
}

impl BatchNorm {
    /// Over `c` channels in `b`'s current scope: weight 1, bias 0, running stats 0 / 1.
    pub fn new(b: &mut Builder, c: usize) -> std::result::Result<Self, String> {
        let e = |e: candle_core::Error| e.to_string();
        let weight = b.param("weight", Tensor::ones(c, DType::F32, b.device()).map_err(e)?)?;
        let bias = b.param("bias", Tensor::zeros(c, DType::F32, b.device()).map_err(e)?)?;
        let running_mean = Var::zeros(c, DType::F32, b.device()).map_err(e)?;
        let running_var = Var::ones(c, DType::F32, b.device()).map_err(e)?;
        b.buffer("running_mean", running_mean.clone());
        b.buffer("running_var", running_var.clone());
        let batches_tracked = b.counter("num_batches_tracked");
        let frozen = b.frozen_norm();
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            batches_tracked,
            momentum: 0.1,
            eps: 1e-5,
            fused: Fused::None,
            frozen,
        })
    }

    /// The same layer with the activation after it computed in its pass.
    pub fn with(self, fused: Fused) -> Self {
        Self { fused, ..self }
    }

    /// `(n, c, h, w)` or `(n, c)` -> same shape: fused kernels on CPU, candle ops elsewhere.
    fn forward_fused(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !xs.device().is_cpu() {
            let y = self.forward_generic(xs, train)?;
            return match self.fused {
                Fused::None => Ok(y),
                Fused::Relu => relu(&y),
                Fused::Relu6 => relu6(&y),
            };
        }
        let xs = xs.contiguous()?;
        let affine = Tensor::stack(&[&self.weight, &self.bias], 0)?;
        let (stats, batch_stats) = if train {
            let stats = xs.detach().apply_op1_no_bwd(&ChannelStats)?;
            let (c, count) = (xs.dim(1)?, xs.elem_count() / xs.dim(1)?);
            let m = self.momentum;
            let unbiased = (stats.get(1)? * (count as f64 / (count.max(2) - 1) as f64))?;
            self.running_mean.set(&((self.running_mean.as_tensor() * (1.0 - m))? + (stats.get(0)? * m)?)?)?;
            self.running_var.set(&((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?)?;
            self.batches_tracked.fetch_add(1, Ordering::Relaxed);
            debug_assert_eq!(stats.dims(), &[2, c]);
            (stats, true)
        } else {
            // Detached: candle's backward expects a gradient for every tracked input, and the
            // running statistics take none.
            let stats = Tensor::stack(&[self.running_mean.as_tensor(), self.running_var.as_tensor()], 0)?;
            (stats.detach(), false)
        };
        xs.apply_op3(&stats, &affine, BatchNormOp { eps: self.eps, batch_stats, fused: self.fused })
    }

    /// The normalisation (without the ReLU) from candle's own ops (any device; the reference
    /// the fused CPU kernels are tested against).
    pub fn forward_generic(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let c = xs.dim(1)?;
        let shape: Vec<usize> = (0..xs.rank()).map(|i| if i == 1 { c } else { 1 }).collect();
        let (mean, var) = if train {
            // Statistics over every dim but the channel's: channels first, the rest flattened.
            let flat = xs.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
            let count = flat.dim(1)?;
            let mean = flat.mean_keepdim(D::Minus1)?;
            let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
            let m = self.momentum;
            let unbiased = (var.detach() * (count as f64 / (count.max(2) - 1) as f64))?.flatten_all()?;
            self.running_mean
                .set(&((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach().flatten_all()? * m)?)?)?;
            self.running_var.set(&((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?)?;
            self.batches_tracked.fetch_add(1, Ordering::Relaxed);
            (mean.reshape(shape.as_slice())?, var.reshape(shape.as_slice())?)
        } else {
            (
                self.running_mean.as_tensor().reshape(shape.as_slice())?,
                self.running_var.as_tensor().reshape(shape.as_slice())?,
            )
        };
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let scale = self.weight.reshape(shape.as_slice())?.broadcast_mul(&inv_std)?;
        xs.broadcast_sub(&mean)?.broadcast_mul(&scale)?.broadcast_add(&self.bias.reshape(shape.as_slice())?)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(xs, train && !self.frozen.load(Ordering::Relaxed))
    }
}

/// Builds `bn<N>` over the walk's channels; a ReLU (ReLU6) that alone reads it is fused in.
pub(super) fn build(walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = walk.shape.clone();
    if shape.len() != 3 && shape.len() != 1 {
        return Err(format!("expects (channels, h, w) or (features) input, got {shape:?}"));
    }
    let name = walk.name_or("bn");
    let bn = BatchNorm::new(&mut walk.builder.pp(name.clone()), shape[0])?;
    let bn = bn.with(walk.activation_follows);
    Ok(walk.built(Box::new(bn), name, shape.clone(), 2 * shape[0], 0))
}
