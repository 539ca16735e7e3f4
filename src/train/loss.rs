//! The training loss: cross-entropy, optionally against smoothed targets, weighted by class,
//! or against the soft targets of mixup and cutmix.

use candle_core::{D, Tensor};

/// Mean cross-entropy of `logits` (batch, classes) against the labels `y`, with the target
/// smoothed by `smoothing` as PyTorch's `F.cross_entropy(logits, y, label_smoothing=ε)`:
/// `(1 − ε) · nll + ε · mean over classes of −log p`. With `ε = 0` it is candle's
/// cross-entropy itself (so runs without smoothing compute what they always did).
pub fn cross_entropy(logits: &Tensor, y: &Tensor, smoothing: f64) -> candle_core::Result<Tensor> {
    if smoothing == 0.0 {
        return candle_nn::loss::cross_entropy(logits, y);
    }
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = candle_nn::loss::nll(&log_p, y)?;
    let uniform = log_p.mean(D::Minus1)?.mean_all()?.neg()?;
    (nll * (1.0 - smoothing))? + (uniform * smoothing)?
}

/// PyTorch's `F.cross_entropy(logits, y, weight=w, label_smoothing=ε)`: each image's loss
/// weighted by its class's weight and the sum divided by the sum of those weights; the
/// smoothing term weights each class's `−log p` by its own weight over the same sum.
pub fn weighted_cross_entropy(logits: &Tensor, y: &Tensor, w: &Tensor, smoothing: f64) -> candle_core::Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let w_y = w.gather(y, 0)?;
    let total = w_y.sum_all()?;
    let picked = log_p.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
    let nll = (picked * &w_y)?.sum_all()?.neg()?.div(&total)?;
    if smoothing == 0.0 {
        return Ok(nll);
    }
    let classes = logits.dim(D::Minus1)? as f64;
    let smooth = log_p.broadcast_mul(&w.unsqueeze(0)?)?.sum_all()?.neg()?.div(&total)?;
    (nll * (1.0 - smoothing))? + (smooth * (smoothing / classes))?
}

/// timm's `SoftTargetCrossEntropy`: the mean over images of `Σ_c −t_c log p_c` for soft
/// targets `t` (batch, classes).
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    (targets * log_p)?.sum(D::Minus1)?.mean_all()?.neg()
}

/// scikit-learn's `compute_class_weight("balanced")`: `images / (classes · images of the
/// class)`, from each image's label; a class without images gets the weight of one image.
pub fn balanced_class_weights(labels: impl Iterator<Item = usize>, classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; classes];
    for l in labels {
        counts[l] += 1;
    }
    let n: usize = counts.iter().sum();
    counts.iter().map(|&c| n as f64 / (classes as f64 * c.max(1) as f64)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn balanced_weights_are_scikit_learns() {
        // compute_class_weight("balanced", classes=[0, 1, 2], y=[0]*6 + [1]*3 + [2]) = [0.5556, 1.1111, 3.3333]
        let w = super::balanced_class_weights([0; 6].into_iter().chain([1; 3]).chain([2]), 3);
        let expected = [10.0 / 18.0, 10.0 / 9.0, 10.0 / 3.0];
        assert!(w.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12), "{w:?}");
    }
}
