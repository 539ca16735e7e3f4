//! `flatten`: `(n, ...) -> (n, product)`.

use candle_core::{Module, Result, Tensor};

use super::{Built, Walk};

pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.flatten_from(1)
    }
}

pub(super) fn build(walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = vec![walk.shape.iter().product()];
    Ok(walk.plain(Box::new(Flatten), "flatten", shape))
}
