//! `dropout`: zeroes each element with probability `p` in training (scaling the rest by
//! `1 / (1 - p)`); the identity in evaluation. `dropout2d` zeroes whole channels.

use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor};
use candle_nn::ModuleT;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Built, Walk};

/// Masks drawn from the model's seeded dropout generator, so runs repeat exactly.
pub struct Dropout {
    p: f64,
    rng: Arc<Mutex<ChaCha8Rng>>,
    /// One draw per (sample, channel), as PyTorch's `Dropout2d`.
    channels: bool,
}

impl ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let shape: Vec<usize> = match (self.channels, xs.dims()) {
            (true, [n, c, rest @ ..]) => [*n, *c].into_iter().chain(rest.iter().map(|_| 1)).collect(),
            (_, dims) => dims.to_vec(),
        };
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().expect("dropout rng poisoned");
            (0..shape.iter().product()).map(|_| if rng.gen_bool(self.p) { 0.0 } else { keep }).collect()
        };
        xs.broadcast_mul(&Tensor::from_vec(mask, shape, xs.device())?)
    }
}

pub(super) fn build(p: f64, walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = walk.shape.clone();
    Ok(walk.plain(Box::new(Dropout { p, rng: walk.dropout_rng.clone(), channels: false }), "dropout", shape))
}

pub(super) fn build_2d(p: f64, walk: &mut Walk) -> std::result::Result<Built, String> {
    let (c, h, w) = walk.spatial()?;
    let dropout = Dropout { p, rng: walk.dropout_rng.clone(), channels: true };
    Ok(walk.plain(Box::new(dropout), "dropout", vec![c, h, w]))
}
