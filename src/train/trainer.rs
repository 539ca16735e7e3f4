//! The training loop: epochs of seeded shuffled batches, evaluation on the hold-out, metrics to
//! every sink, `last` and `best` checkpoints.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

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

/// Set by Ctrl-C (and by the test hook below): the trainer finishes its current step, writes
/// a checkpoint it can resume from, and stops with [`Interrupted`].
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Testing and debugging aid: request a stop after this many steps of this process (0: never),
/// exactly as Ctrl-C would.
pub static STOP_AFTER_STEPS: AtomicUsize = AtomicUsize::new(0);

/// Training steps taken by this process, over every variant (for [`STOP_AFTER_STEPS`]).
static STEPS_TAKEN: AtomicUsize = AtomicUsize::new(0);

/// A training stopped on request; its checkpoint resumes it exactly.
#[derive(Debug, thiserror::Error)]
#[error("interrupted after {batches_done} batches of epoch {epoch}; the checkpoint in {} resumes it", dir.display())]
pub struct Interrupted {
    pub epoch: usize,
    pub batches_done: usize,
    pub dir: std::path::PathBuf,
}

/// Everything needed to continue a training exactly where it stopped (`checkpoints/state.toml`,
/// beside `last.safetensors` and `optimizer.safetensors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Fingerprint of the resolved config the run started with.
    pub fingerprint: String,
    /// Epochs finished.
    pub epochs_done: usize,
    /// Batches finished in the next epoch (0 at an epoch boundary), with their partial sums.
    pub batches_done: usize,
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
    pub compute_secs: f64,
    pub elapsed_secs: f64,
    /// Optimizer steps taken (the schedule's position).
    pub step: usize,
    pub best_epoch: usize,
    /// Best score so far (validation accuracy, or minus the training loss); absent before any.
    pub best_score: Option<f64>,
    /// Position of the dropout generator's stream (a u128, as text).
    pub dropout_word_pos: String,
}

impl TrainState {
    fn fresh(fingerprint: &str) -> Self {
        Self {
            fingerprint: fingerprint.into(),
            epochs_done: 0,
            batches_done: 0,
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            compute_secs: 0.0,
            elapsed_secs: 0.0,
            step: 0,
            best_epoch: 0,
            best_score: None,
            dropout_word_pos: "0".into(),
        }
    }
}

/// FNV-1a of the resolved config text: a resume refuses a config that changed since the start.
/// (Eight lines; no crate needed for a non-cryptographic fingerprint.)
pub fn fingerprint(config_text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in config_text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Writes the resumable state: model, optimizer, then the state file that makes them a set.
fn save_state(model: &Model, opt: &Optimizer, state: &TrainState, ckpt_dir: &Path) -> anyhow::Result<()> {
    checkpoint::save(model, &ckpt_dir.join("last.safetensors"))?;
    let tensors = opt.state_dict()?;
    let bytes = safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)?;
    crate::output::write_atomic(&ckpt_dir.join("optimizer.safetensors"), &bytes)?;
    crate::output::write_atomic(&ckpt_dir.join("state.toml"), toml::to_string(state)?.as_bytes())?;
    Ok(())
}

/// Reads what [`save_state`] wrote, if a previous attempt left it.
pub fn load_state(ckpt_dir: &Path) -> anyhow::Result<Option<TrainState>> {
    let path = ckpt_dir.join("state.toml");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    Ok(Some(toml::from_str(&text).with_context(|| format!("cannot read {}", path.display()))?))
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
/// and each epoch's metrics to every sink. With `resume`, continues from that state (the
/// model and optimizer are reloaded from `ckpt_dir`) and `history` holds the epochs before it.
#[allow(clippy::too_many_arguments)] // the loop's inputs, each used; a struct would only rename them
pub fn fit(
    spec: &Spec,
    model: &Model,
    data: &Splits,
    device: &Device,
    sinks: &mut [Box<dyn MetricSink>],
    ckpt_dir: &Path,
    log: &RunLog,
    resume: Option<(TrainState, Vec<EpochMetrics>)>,
    config_fingerprint: &str,
) -> anyhow::Result<FitOutcome> {
    let cfg = &spec.raw;
    let epochs = cfg.train.epochs;
    let steps_per_epoch = data.train_idx.len().div_ceil(cfg.data.batch_size);
    let mut opt = Optimizer::new(cfg.optimizer.clone(), model.trainable());
    let (mut st, mut history) = match resume {
        Some((st, history)) => {
            if st.fingerprint != config_fingerprint {
                bail!(
                    "config.toml changed since this run started (fingerprint {} != {}): resume refuses to mix configurations",
                    config_fingerprint,
                    st.fingerprint
                );
            }
            checkpoint::load(model, &ckpt_dir.join("last.safetensors"))?;
            let tensors = candle_core::safetensors::load(ckpt_dir.join("optimizer.safetensors"), device)?;
            opt.load_state_dict(&tensors)?;
            model.set_dropout_word_pos(st.dropout_word_pos.parse().context("state.toml: dropout_word_pos")?);
            log.info(format!("resuming after {} epochs and {} batches", st.epochs_done, st.batches_done));
            (st, history)
        }
        None => (TrainState::fresh(config_fingerprint), Vec::with_capacity(epochs)),
    };
    let mut lr = cfg.optimizer.lr;

    for epoch in st.epochs_done + 1..=epochs {
        let started = Instant::now() - std::time::Duration::from_secs_f64(st.elapsed_secs);
        let mut order = data.train_idx.clone();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed.wrapping_add(epoch as u64)));
        // A resumed epoch skips the batches it already trained on (the order is seeded).
        let order = order.split_off((st.batches_done * cfg.data.batch_size).min(order.len()));
        let pb = bar(log, steps_per_epoch, format!("epoch {epoch}/{epochs}"));
        pb.set_position(st.batches_done as u64);
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
                    st.step + 1
                );
            }
            lr = lr_at(cfg.optimizer.lr, &cfg.train.lr_schedule, st.step, steps_per_epoch, epochs);
            opt.step(&loss.backward()?, lr)?;
            st.correct +=
                logits.argmax(D::Minus1)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
            st.loss_sum += loss_value * n as f64;
            st.seen += n;
            st.step += 1;
            st.batches_done += 1;
            st.compute_secs += t0.elapsed().as_secs_f64();
            pb.set_message(format!(
                "loss {:.4} acc {:.3}",
                st.loss_sum / st.seen as f64,
                st.correct as f64 / st.seen as f64
            ));
            pb.inc(1);
            let taken = STEPS_TAKEN.fetch_add(1, Ordering::Relaxed) + 1;
            let limit = STOP_AFTER_STEPS.load(Ordering::Relaxed);
            if STOP.load(Ordering::Relaxed) || (limit > 0 && taken >= limit) {
                pb.finish_and_clear();
                st.elapsed_secs = started.elapsed().as_secs_f64();
                st.dropout_word_pos = model.dropout_word_pos().to_string();
                save_state(model, &opt, &st, ckpt_dir)?;
                return Err(Interrupted { epoch, batches_done: st.batches_done, dir: ckpt_dir.to_path_buf() }.into());
            }
        }
        pb.finish_and_clear();
        if st.seen == 0 {
            bail!("no training image could be read in epoch {epoch}");
        }
        let train_secs = started.elapsed().as_secs_f64();
        let val =
            if data.val_idx.is_empty() { None } else { Some(evaluate(model, &data.val, &data.val_idx, device, log)?) };
        let m = EpochMetrics {
            epoch,
            train_loss: st.loss_sum / st.seen as f64,
            train_acc: st.correct as f64 / st.seen as f64,
            val_loss: val.map(|v| v.0),
            val_acc: val.map(|v| v.1),
            lr,
            images_per_sec: st.seen as f64 / train_secs,
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
            st.seen as f64 / st.compute_secs.max(1e-9),
            m.seconds
        ));
        // Best by validation accuracy (ties keep the earlier epoch); without a hold-out, by
        // training loss.
        let score = m.val_acc.unwrap_or(-m.train_loss);
        if st.best_score.is_none_or(|b| score > b) {
            st.best_score = Some(score);
            st.best_epoch = epoch;
            checkpoint::save(model, &ckpt_dir.join("best.safetensors")).context("saving the best checkpoint")?;
        }
        history.push(m);
        // The epoch's sums start again; the run's position and best carry over.
        st = TrainState {
            epochs_done: epoch,
            step: st.step,
            best_epoch: st.best_epoch,
            best_score: st.best_score,
            dropout_word_pos: model.dropout_word_pos().to_string(),
            ..TrainState::fresh(&st.fingerprint)
        };
        save_state(model, &opt, &st, ckpt_dir)?;
    }
    Ok(FitOutcome { epochs: history, best_epoch: st.best_epoch })
}
