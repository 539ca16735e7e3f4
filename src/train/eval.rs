//! Evaluation and prediction: the model in inference mode over a loader's items.

use anyhow::bail;
use candle_core::{D, DType, Device, Tensor};
use candle_nn::ModuleT;

use super::components::Progress;
use crate::data::loader::Loader;
use crate::model::Model;

/// How many of a batch's `logits` pick the label `y`.
pub(crate) fn correct(logits: &Tensor, y: &Tensor) -> candle_core::Result<usize> {
    Ok(logits.argmax(D::Minus1)?.eq(y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize)
}

/// Mean loss and accuracy of `model` over `order`, in evaluation mode.
pub fn evaluate(
    model: &Model,
    loader: &Loader,
    order: &[usize],
    device: &Device,
    progress: &dyn Progress,
) -> anyhow::Result<(f64, f64)> {
    let bar = progress.bar("validate".into(), order.len().div_ceil(loader.batch_size));
    let (mut loss_sum, mut hits, mut seen) = (0f64, 0usize, 0usize);
    for batch in loader.batches(order.to_vec(), 0) {
        let batch = batch?;
        let n = batch.labels.len();
        let x = batch.images.to_device(device)?;
        let y = Tensor::new(batch.labels.as_slice(), device)?;
        let logits = model.forward_t(&x, false)?;
        loss_sum += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * n as f64;
        hits += correct(&logits, &y)?;
        seen += n;
        bar.step(None);
    }
    bar.finish();
    if seen == 0 {
        bail!("no validation image could be read");
    }
    Ok((loss_sum / seen as f64, hits as f64 / seen as f64))
}

/// One image's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicted {
    /// Index into the loader's items.
    pub index: usize,
    /// The class of the highest logit.
    pub class: usize,
    /// Softmax of the logits.
    pub probs: Vec<f32>,
}

/// The prediction for each item of `loader` at `order`, in that order (an image a loader with
/// `skip_bad` skipped has none).
pub fn predict(
    model: &Model,
    loader: &Loader,
    order: Vec<usize>,
    device: &Device,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<Predicted>> {
    let bar = progress.bar("predict".into(), order.len().div_ceil(loader.batch_size));
    let mut out = Vec::with_capacity(order.len());
    for batch in loader.batches(order, 0) {
        let batch = batch?;
        let logits = model.forward_t(&batch.images.to_device(device)?, false)?;
        let classes = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
        out.extend(batch.indices.iter().zip(classes).zip(probs).map(|((&index, c), probs)| Predicted {
            index,
            class: c as usize,
            probs,
        }));
        bar.step(None);
    }
    bar.finish();
    Ok(out)
}
