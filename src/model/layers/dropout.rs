//! `dropout`: zeroes each element with probability `p` in training (scaling the rest by
//! `1 / (1 - p)`); the identity in evaluation.

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
}

impl ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().expect("dropout rng poisoned");
            (0..xs.elem_count()).map(|_| if rng.gen_bool(self.p) { 0.0 } else { keep }).collect()
        };
        xs.mul(&Tensor::from_vec(mask, xs.shape(), xs.device())?)
    }
}

pub(super) fn build(p: f64, walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = walk.shape.clone();
    Ok(walk.plain(Box::new(Dropout { p, rng: walk.dropout_rng.clone() }), "dropout", shape))
}
