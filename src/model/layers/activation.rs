//! `sigmoid`, `silu`, `gelu`, `hardswish`, `hardsigmoid`: element-wise, shape unchanged, with
//! PyTorch's definitions and gradients (tests/suite/parity.rs checks both against float64).

use candle_core::{Module, Result, Tensor};

use super::{Built, Walk};
use crate::spec::Activation;

pub struct Act(Activation);

impl Module for Act {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.0 {
            Activation::Sigmoid => candle_nn::ops::sigmoid(x),
            Activation::Silu => x.silu(),
            // erf's own gradient (2 / sqrt(pi) e^(-x^2), exact) rather than candle's `gelu_erf`,
            // whose gradient rounds 1 / sqrt(2 pi) to 0.398942 (7e-7 off: PyTorch is closer).
            Activation::Gelu => (x * 0.5)?.mul(&((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)?),
            Activation::Hardswish => x.mul(&hardsigmoid(x)?),
            Activation::Hardsigmoid => hardsigmoid(x),
        }
    }
}

/// `min(max(x + 3, 0), 6) / 6`: gradient 1/6 inside (-3, 3), 0 outside.
fn hardsigmoid(x: &Tensor) -> Result<Tensor> {
    (x + 3.0)?.clamp(0f32, 6f32)? / 6.0
}

pub(super) fn build(a: Activation, walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = walk.shape.clone();
    Ok(walk.plain(Box::new(Act(a)), a.name(), shape))
}
