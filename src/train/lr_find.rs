//! The learning-rate range test (fastai's `lr_find`, Lightning's `Tuner.lr_find`): train from
//! the experiment's starting weights with a rate growing exponentially each step, record the
//! loss, stop once it diverges, and suggest the rate where the smoothed loss falls fastest.

use candle_core::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::components::Progress;
use super::learner::{Objective, Splits, batch_rng};
use super::optim::Optimizer;
use crate::model::Model;
use crate::spec::Spec;

/// One step of the test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrPoint {
    pub lr: f64,
    /// The batch's loss.
    pub loss: f64,
    /// The smoothed loss (fastai's `AvgSmoothLoss`, Lightning's too): an exponential average
    /// (β = 0.98), debiased.
    pub smoothed: f64,
}

/// fastai's and Lightning's defaults: the smoothing of the loss and the divergence that stops
/// the test.
const BETA: f64 = 0.98;
const DIVERGED: f64 = 4.0;

/// Trains `model` for up to `steps` steps at rates from `start` to `end` (exponentially
/// spaced, Lightning's `mode="exponential"`), cycling through the seeded epochs of the training
/// split; stops early once the smoothed loss exceeds 4x its best (or the loss is not finite).
pub fn range_test(
    spec: &Spec,
    model: &Model,
    data: &Splits,
    device: &Device,
    (start, end, steps): (f64, f64, usize),
    progress: &dyn Progress,
) -> anyhow::Result<Vec<LrPoint>> {
    if data.train_idx.is_empty() {
        anyhow::bail!("no training images to test learning rates on");
    }
    let mut opt = Optimizer::new(spec.optimizer.clone(), model.trainable());
    let objective = Objective::new(spec, data, device)?;
    let bar = progress.bar("lr-find".into(), steps);
    let (mut points, mut average, mut best) = (Vec::with_capacity(steps), 0.0, f64::INFINITY);
    'epochs: for epoch in 1.. {
        let mut order = data.train_idx.clone();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed.wrapping_add(epoch as u64)));
        for (b, batch) in data.train.batches(order, epoch as u64).enumerate() {
            let i = points.len();
            if i == steps {
                break 'epochs;
            }
            let batch = batch?;
            let lr = start * (end / start).powf(i as f64 / (steps - 1).max(1) as f64);
            let x = batch.images.to_device(device)?;
            let (loss, _, _) = objective.loss(model, x, &batch.labels, &mut batch_rng(spec.seed, epoch, b))?;
            let value = loss.to_scalar::<f32>()? as f64;
            average = BETA * average + (1.0 - BETA) * value;
            let smoothed = average / (1.0 - BETA.powi(i as i32 + 1));
            points.push(LrPoint { lr, loss: value, smoothed });
            bar.step(Some(format!("lr {lr:.2e} loss {smoothed:.4}")));
            if !value.is_finite() || smoothed > DIVERGED * best {
                break 'epochs;
            }
            best = best.min(smoothed);
            opt.step(&loss.backward()?, lr)?;
        }
    }
    bar.finish();
    Ok(points)
}

/// fastai's suggestion (`valley`, its default since 2.5), for a test of `steps` steps: of the
/// smoothed losses without the first `steps / 10` and the last 5, the longest decreasing
/// subsequence; the rate a half of a third past its start. (Lightning's steepest gradient is
/// the other common rule; it picks the noise of the diverging end too often.) `None` when too
/// few points are left.
pub fn suggest(points: &[LrPoint], steps: usize) -> Option<usize> {
    let begin = steps / 10;
    let end = points.len().checked_sub(5)?;
    if end <= begin + 1 {
        return None;
    }
    let losses: Vec<f64> = points[begin..end].iter().map(|p| p.smoothed).collect();
    let n = losses.len();
    // lds[i]: the longest decreasing subsequence ending at i (fastai's loops, as written).
    let (mut lds, mut max_start, mut max_end) = (vec![1usize; n], 0usize, 0usize);
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end - lds[max_end];
            }
        }
    }
    let sections = (max_end - max_start) as f64 / 3.0;
    Some(begin + max_start + sections as usize + (sections / 2.0) as usize)
}
