//! `dropout`: zeroes each element with probability `p` in training (scaling the rest by
//! `1 / (1 - p)`); the identity in evaluation. `dropout2d` zeroes whole channels,
//! `stochastic_depth` whole samples (drop-path: a residual branch left out for some images).

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
    /// How many leading dimensions each draw covers: all (dropout), batch and channel
    /// (`Dropout2d`), batch (drop-path).
    per: Per,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Per {
    Element,
    Channel,
    Sample,
}

impl ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let kept = match self.per {
            Per::Element => xs.rank(),
            Per::Channel => 2,
            Per::Sample => 1,
        };
        let shape: Vec<usize> = xs.dims().iter().enumerate().map(|(i, &d)| if i < kept { d } else { 1 }).collect();
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().expect("dropout rng poisoned");
            (0..shape.iter().product()).map(|_| if rng.gen_bool(self.p) { 0.0 } else { keep }).collect()
        };
        xs.broadcast_mul(&Tensor::from_vec(mask, shape, xs.device())?)
    }
}

pub(super) fn build(p: f64, walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = walk.shape.clone();
    Ok(walk.plain(Box::new(Dropout { p, rng: walk.dropout_rng.clone(), per: Per::Element }), "dropout", shape))
}

pub(super) fn build_2d(p: f64, walk: &mut Walk) -> std::result::Result<Built, String> {
    let (c, h, w) = walk.spatial()?;
    let dropout = Dropout { p, rng: walk.dropout_rng.clone(), per: Per::Channel };
    Ok(walk.plain(Box::new(dropout), "dropout", vec![c, h, w]))
}

pub(super) fn build_path(p: f64, walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = walk.shape.clone();
    let dropout = Dropout { p, rng: walk.dropout_rng.clone(), per: Per::Sample };
    Ok(walk.plain(Box::new(dropout), "drop_path", shape))
}
