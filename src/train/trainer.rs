//! The training loop: epochs of seeded shuffled batches, evaluation on the hold-out, metrics to
//! every sink, `last` and `best` checkpoints.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::ModuleT;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::optim::{Optimizer, lr_at};
use crate::config::Spec;
use crate::data::loader::Loader;
use crate::model::Model;
use crate::output::checkpoint;
use crate::output::log::RunLog;
use crate::output::sink::{EpochMetrics, MetricSink};

/// The labelled data of a run: one loader per pipeline and the indices of each split.
pub struct Splits {
    pub train: Loader,
    pub train_idx: Vec<usize>,
    pub val: Loader,
    pub val_idx: Vec<usize>,
}

/// How a finished training went.
#[derive(Debug, Clone)]
pub struct FitOutcome {
    pub epochs: Vec<EpochMetrics>,
    /// Epoch (1-based) whose weights are in `best.safetensors`.
    pub best_epoch: usize,
}

fn bar(log: &RunLog, len: usize, prefix: String) -> ProgressBar {
    let pb = log.progress.add(ProgressBar::new(len as u64));
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

/// Mean loss and accuracy of `model` over `order`, in evaluation mode.
pub fn evaluate(
    model: &Model,
    loader: &Loader,
    order: &[usize],
    device: &Device,
    log: &RunLog,
) -> anyhow::Result<(f64, f64)> {
    let pb = bar(log, order.len().div_ceil(loader.batch_size), "validate".into());
    let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
    for batch in loader.batches(order.to_vec(), 0) {
        let batch = batch?;
        let n = batch.labels.len();
        let x = batch.images.to_device(device)?;
        let y = Tensor::new(batch.labels.as_slice(), device)?;
        let logits = model.forward_t(&x, false)?;
        loss_sum += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * n as f64;
        correct += logits.argmax(D::Minus1)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
        seen += n;
        pb.inc(1);
    }
    pb.finish_and_clear();
    if seen == 0 {
        bail!("no validation image could be read");
    }
    Ok((loss_sum / seen as f64, correct as f64 / seen as f64))
}

/// The predicted class of every item of `loader`, in item order, as `(item index, class)`.
pub fn predict(model: &Model, loader: &Loader, device: &Device, log: &RunLog) -> anyhow::Result<Vec<(usize, usize)>> {
    let order: Vec<usize> = (0..loader.items().len()).collect();
    let pb = bar(log, order.len().div_ceil(loader.batch_size), "predict".into());
    let mut out = Vec::with_capacity(order.len());
    for batch in loader.batches(order, 0) {
        let batch = batch?;
        let logits = model.forward_t(&batch.images.to_device(device)?, false)?;
        let classes = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        out.extend(batch.indices.iter().zip(classes).map(|(&i, c)| (i, c as usize)));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Trains `model` for the spec's epochs; writes `last` and `best` checkpoints into `ckpt_dir`
/// and each epoch's metrics to every sink.
pub fn fit(
    spec: &Spec,
    model: &Model,
    data: &Splits,
    device: &Device,
    sinks: &mut [Box<dyn MetricSink>],
    ckpt_dir: &Path,
    log: &RunLog,
) -> anyhow::Result<FitOutcome> {
    let cfg = &spec.raw;
    let epochs = cfg.train.epochs;
    let steps_per_epoch = data.train_idx.len().div_ceil(cfg.data.batch_size);
    let mut opt = Optimizer::new(cfg.optimizer.clone(), model.trainable());
    let mut history = Vec::with_capacity(epochs);
    let (mut best_epoch, mut best_score) = (0, f64::NEG_INFINITY);
    let mut step = 0usize;
    let mut lr = cfg.optimizer.lr;

    for epoch in 1..=epochs {
        let started = Instant::now();
        let mut order = data.train_idx.clone();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed.wrapping_add(epoch as u64)));
        let pb = bar(log, steps_per_epoch, format!("epoch {epoch}/{epochs}"));
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut compute_secs = 0f64;
        for batch in data.train.batches(order, epoch as u64) {
            let batch = batch?;
            let t0 = Instant::now();
            let n = batch.labels.len();
            let x = batch.images.to_device(device)?;
            let y = Tensor::new(batch.labels.as_slice(), device)?;
            let logits = model.forward_t(&x, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                bail!(
                    "the training loss became {loss_value} at epoch {epoch}, step {}: try a lower optimizer.lr",
                    step + 1
                );
            }
            lr = lr_at(cfg.optimizer.lr, &cfg.train.lr_schedule, step, steps_per_epoch, epochs);
            opt.step(&loss.backward()?, lr)?;
            correct += logits.argmax(D::Minus1)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
            loss_sum += loss_value * n as f64;
            seen += n;
            step += 1;
            compute_secs += t0.elapsed().as_secs_f64();
            pb.set_message(format!("loss {:.4} acc {:.3}", loss_sum / seen as f64, correct as f64 / seen as f64));
            pb.inc(1);
        }
        pb.finish_and_clear();
        if seen == 0 {
            bail!("no training image could be read in epoch {epoch}");
        }
        let train_secs = started.elapsed().as_secs_f64();
        let val =
            if data.val_idx.is_empty() { None } else { Some(evaluate(model, &data.val, &data.val_idx, device, log)?) };
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_acc: correct as f64 / seen as f64,
            val_loss: val.map(|v| v.0),
            val_acc: val.map(|v| v.1),
            lr,
            images_per_sec: seen as f64 / train_secs,
            seconds: started.elapsed().as_secs_f64(),
        };
        for sink in sinks.iter_mut() {
            sink.record(&m)?;
        }
        log.info(format!(
            "epoch {epoch}/{epochs}: train loss {:.4} acc {:.4} | val loss {} acc {} | lr {:.3e} | {:.1} img/s ({:.1} img/s compute only) | {:.1}s",
            m.train_loss,
            m.train_acc,
            m.val_loss.map_or("-".into(), |v| format!("{v:.4}")),
            m.val_acc.map_or("-".into(), |v| format!("{v:.4}")),
            m.lr,
            m.images_per_sec,
            seen as f64 / compute_secs.max(1e-9),
            m.seconds
        ));
        checkpoint::save(model, &ckpt_dir.join("last.safetensors"))?;
        // Best by validation accuracy (ties keep the earlier epoch); without a hold-out, by
        // training loss.
        let score = m.val_acc.unwrap_or(-m.train_loss);
        if score > best_score {
            best_score = score;
            best_epoch = epoch;
            checkpoint::save(model, &ckpt_dir.join("best.safetensors")).context("saving the best checkpoint")?;
        }
        history.push(m);
    }
    Ok(FitOutcome { epochs: history, best_epoch })
}
