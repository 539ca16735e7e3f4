//! `relu`: `max(x, 0)`, shape unchanged.

use candle_core::{Module, Result, Tensor};

use super::graph::Op;
use super::{Built, Walk};

pub struct Relu;

impl Module for Relu {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::ops::norm::relu(xs)
    }
}

/// A ReLU that alone reads a BatchNorm or an add is computed by it: then only its summary
/// row remains.
pub(super) fn build(walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = walk.shape.clone();
    if walk.fused {
        return Ok(Built { op: Op::Same, ..walk.plain(Box::new(Relu), "relu", shape) });
    }
    Ok(walk.plain(Box::new(Relu), "relu", shape))
}
