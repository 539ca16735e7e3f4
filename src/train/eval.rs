//! Evaluation and prediction: the model in inference mode over a loader's items.

use anyhow::{Context, bail};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::ModuleT;

use super::components::Progress;
use crate::data::loader::{Batch, Batches, Loader};
use crate::model::Model;
use crate::spec::Tta;
use crate::stats::{ClassScore, Confusion};

/// How many of a batch's `logits` pick the label `y`.
pub(crate) fn correct(logits: &Tensor, y: &Tensor) -> candle_core::Result<usize> {
    Ok(logits.argmax(D::Minus1)?.eq(y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize)
}

/// What validation measures.
#[derive(Debug, Clone, PartialEq)]
pub struct ValScores {
    pub loss: f64,
    pub acc: f64,
    pub macro_f1: Option<f64>,
    /// Top-5 accuracy, with more than 5 classes.
    pub top5: Option<f64>,
    /// Each class's precision, recall and F1.
    pub classes: Vec<ClassScore>,
}

/// Mean loss, accuracy, macro F1, top-5 accuracy and per-class recall of `model` over
/// `order`, in evaluation mode. With test-time augmentation (`tta`), each image's
/// probabilities are the mean softmax over it and its variants, and its loss the negative log
/// of the label's mean probability.
pub fn evaluate(
    model: &Model,
    loader: &Loader,
    order: &[usize],
    (device, tta): (&Device, &[Tta]),
    progress: &dyn Progress,
) -> anyhow::Result<ValScores> {
    let bar = progress.bar("validate".into(), order.len().div_ceil(loader.batch_size));
    let (mut loss_sum, mut top5, mut seen) = (0f64, 0usize, 0usize);
    let mut pairs = Vec::with_capacity(order.len());
    let mut classes = 0;
    for batch in with_views(loader, order.to_vec(), tta) {
        let (batch, views) = batch?;
        let n = batch.labels.len();
        let x = batch.images.to_device(device)?;
        let y = Tensor::new(batch.labels.as_slice(), device)?;
        let logits = if tta.is_empty() {
            model.forward_t(&x, false)?
        } else {
            // Log-probabilities: cross-entropy of these is the NLL of the mean probability.
            mean_probs(model, &x, &views, tta)?.log()?
        };
        loss_sum += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * n as f64;
        // The classes as `predict` takes them (argmax), so the best epoch's accuracy is the
        // accuracy of its predictions.
        let predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        classes = rows.first().map_or(classes, Vec::len);
        for ((row, &label), p) in rows.iter().zip(&batch.labels).zip(predicted) {
            pairs.push((label as usize, p as usize));
            let truth = row[label as usize];
            top5 += usize::from(row.iter().filter(|&&v| v > truth).count() < 5);
        }
        seen += n;
        bar.step(None);
    }
    bar.finish();
    if seen == 0 {
        bail!("no validation image could be read");
    }
    let names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
    let confusion = Confusion::from_pairs(&names, pairs);
    Ok(ValScores {
        loss: loss_sum / seen as f64,
        acc: confusion.correct() as f64 / seen as f64,
        macro_f1: confusion.macro_f1(),
        top5: (classes > 5).then(|| top5 as f64 / seen as f64),
        classes: confusion.per_class(),
    })
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
    (device, tta): (&Device, &[Tta]),
    progress: &dyn Progress,
) -> anyhow::Result<Vec<Predicted>> {
    let bar = progress.bar("predict".into(), order.len().div_ceil(loader.batch_size));
    let mut out = Vec::with_capacity(order.len());
    for batch in with_views(loader, order, tta) {
        let (batch, views) = batch?;
        let x = batch.images.to_device(device)?;
        let (classes, probs) = if tta.is_empty() {
            let logits = model.forward_t(&x, false)?;
            let classes = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            (classes, candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?)
        } else {
            let mean = mean_probs(model, &x, &views, tta)?;
            (mean.argmax(D::Minus1)?.to_vec1::<u32>()?, mean)
        };
        let probs = probs.to_vec2::<f32>()?;
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

/// The batches of `loader` over `order`, each with the images of every pipeline variant in
/// `tta` (the same images, in the same order, through the other pipelines' own loaders).
fn with_views<'a>(
    loader: &Loader,
    order: Vec<usize>,
    tta: &'a [Tta],
) -> impl Iterator<Item = anyhow::Result<(Batch, Vec<Tensor>)>> + 'a {
    let mut others: Vec<Batches> = tta
        .iter()
        .filter_map(|t| match t {
            Tta::Pipeline(p) => Some(loader.with_transforms(p.clone()).batches(order.clone(), 0)),
            Tta::Hflip => None,
        })
        .collect();
    loader.batches(order, 0).map(move |batch| {
        let batch = batch?;
        let mut views = Vec::with_capacity(others.len());
        for other in &mut others {
            let view = other.next().context("a test-time pipeline ran out of images")??;
            if view.indices != batch.indices {
                bail!("an image could be read through the eval pipeline but not a test-time one (data.skip_bad)");
            }
            views.push(view.images);
        }
        Ok((batch, views))
    })
}

/// The mean of the softmax outputs over the images `x` and each variant `tta` makes of them
/// (timm's and fastai's test-time augmentation); `views` are the pipeline variants' images.
fn mean_probs(model: &Model, x: &Tensor, views: &[Tensor], tta: &[Tta]) -> candle_core::Result<Tensor> {
    let probs = |x: &Tensor| candle_nn::ops::softmax_last_dim(&model.forward_t(x, false)?.to_dtype(DType::F32)?);
    let mut sum = probs(x)?;
    let mut views = views.iter();
    for t in tta {
        let variant = match t {
            Tta::Hflip => {
                let w = x.dim(3)?;
                let reversed = Tensor::new((0..w as u32).rev().collect::<Vec<_>>(), x.device())?;
                x.index_select(&reversed, 3)?
            }
            Tta::Pipeline(_) => views.next().expect("one view per pipeline").to_device(x.device())?,
        };
        sum = (sum + probs(&variant)?)?;
    }
    sum / (tta.len() + 1) as f64
}
