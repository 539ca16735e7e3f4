//! The training loss: cross-entropy, optionally against smoothed targets.

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
