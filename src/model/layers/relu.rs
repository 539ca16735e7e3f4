//! `relu`: `max(x, 0)`, shape unchanged.

use candle_core::{Module, Result, Tensor};

use super::{Built, Walk};

pub struct Relu;

impl Module for Relu {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::ops::norm::relu(xs)
    }
}

/// A ReLU right after a BatchNorm is computed inside it: then only its summary row remains.
pub(super) fn build(walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = walk.shape.clone();
    if walk.after_batch_norm() {
        return Ok(Built { module: None, ..walk.plain(Box::new(Relu), "relu", shape) });
    }
    Ok(walk.plain(Box::new(Relu), "relu", shape))
}
