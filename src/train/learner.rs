//! The learner: epochs of seeded shuffled batches, evaluation on the hold-out, metrics to
//! every sink, checkpoints committed at each epoch's end (and on a stop request).
//!
//! It knows the world only through the traits of [`super::components`]; `fit` is three
//! steps: [`Learner::train_epoch`], [`Learner::end_epoch`] (evaluate, record, keep the best,
//! commit), repeated, after [`Learner::start`] (fresh or restored).

use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use candle_nn::ModuleT;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::components::{BestPolicy, Checkpointer, EpochMetrics, Hook, MetricSink, Progress, StepEnd, StopSignal};
use super::eval::{correct, evaluate};
use super::optim::{Optimizer, lr_at};
use super::state::{Interrupted, TrainState, fingerprint};
use crate::data::loader::{Batch, Loader};
use crate::model::Model;
use crate::spec::{ClassWeights, Spec};

/// The labelled data of a run: one loader per pipeline and the indices of each split.
pub struct Splits {
    pub train: Loader,
    pub train_idx: Vec<usize>,
    pub val: Loader,
    pub val_idx: Vec<usize>,
    /// Identity of the image files (paths and sizes), kept in the checkpoint's state.
    pub data_fingerprint: String,
}

/// How a finished training went.
#[derive(Debug, Clone)]
pub struct FitOutcome {
    pub epochs: Vec<EpochMetrics>,
    /// Epoch (1-based) whose weights the checkpointer kept as best.
    pub best_epoch: usize,
    /// `(correct, images)` of the best weights on the labelled test images, when the
    /// experiment has their answers (`data.test_labels`).
    pub test: Option<(u64, u64)>,
}

/// One training: a model, its spec and the components it reports to.
pub struct Learner<'a> {
    pub spec: &'a Spec,
    pub model: &'a Model,
    pub device: &'a Device,
    pub checkpointer: &'a mut dyn Checkpointer,
    pub sinks: &'a mut [Box<dyn MetricSink>],
    pub progress: &'a dyn Progress,
    pub hooks: &'a mut [Box<dyn Hook>],
    pub stop: &'a StopSignal,
    pub best: BestPolicy,
}

impl Learner<'_> {
    /// Trains for the spec's epochs. With `resume`, the state the checkpointer committed (see
    /// [`super::Checkpointer::committed`]), training continues from it and `history` holds the
    /// epochs before it; otherwise it starts afresh.
    pub fn fit(
        &mut self,
        data: &Splits,
        resume: Option<TrainState>,
        history: Vec<EpochMetrics>,
    ) -> anyhow::Result<FitOutcome> {
        let mut opt = Optimizer::new(self.spec.optimizer.clone(), self.model.trainable());
        let (mut st, mut history) = self.start(&mut opt, resume, history)?;
        st.data_fingerprint = data.data_fingerprint.clone();
        let objective = Objective::new(self.spec, data, self.device)?;
        for epoch in st.epochs_done + 1..=self.spec.train.epochs {
            self.train_epoch(epoch, &mut st, &mut opt, data, &objective)?;
            let m = self.end_epoch(epoch, &mut st, &opt, data)?;
            history.push(m);
        }
        Ok(FitOutcome { epochs: history, best_epoch: st.best_epoch, test: None })
    }

    /// A fresh state, or the committed one with model and optimizer restored to it (a config
    /// that changed since is refused).
    fn start(
        &mut self,
        opt: &mut Optimizer,
        resume: Option<TrainState>,
        history: Vec<EpochMetrics>,
    ) -> anyhow::Result<(TrainState, Vec<EpochMetrics>)> {
        let expected = fingerprint(&self.spec.config_toml);
        let Some(st) = resume else {
            return Ok((TrainState::fresh(&expected), Vec::with_capacity(self.spec.train.epochs)));
        };
        if st.fingerprint != expected {
            bail!(
                "config.toml changed since this run started (fingerprint {expected} != {}): resume refuses to mix configurations",
                st.fingerprint
            );
        }
        self.checkpointer.restore(self.model, opt)?;
        self.model.set_dropout_word_pos(st.dropout_word_pos.parse().context("state.toml: dropout_word_pos")?);
        self.progress.info(&format!("resuming after {} epochs and {} batches", st.epochs_done, st.batches_done));
        Ok((st, history))
    }

    fn steps_per_epoch(&self, data: &Splits) -> usize {
        data.train_idx.len().div_ceil(self.spec.data.batch_size)
    }

    /// The learning rate of the latest step (the base rate before any).
    fn lr_now(&self, st: &TrainState, data: &Splits) -> f64 {
        let s = self.spec;
        lr_at(
            s.optimizer.lr,
            &s.train.lr_schedule,
            st.step.saturating_sub(1),
            self.steps_per_epoch(data),
            s.train.epochs,
        )
    }

    /// The epoch's remaining batches in its seeded order; on a stop request, commits and
    /// returns [`Interrupted`].
    fn train_epoch(
        &mut self,
        epoch: usize,
        st: &mut TrainState,
        opt: &mut Optimizer,
        data: &Splits,
        objective: &Objective,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut order = data.train_idx.clone();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(self.spec.seed.wrapping_add(epoch as u64)));
        // A resumed epoch skips the batches it already trained on (the order is seeded).
        let order = order.split_off((st.batches_done * self.spec.data.batch_size).min(order.len()));
        let bar = self.progress.bar(format!("epoch {epoch}/{}", self.spec.train.epochs), self.steps_per_epoch(data));
        bar.set_position(st.batches_done);
        let elapsed_before = st.elapsed_secs;
        for batch in data.train.batches(order, epoch as u64) {
            let loss = self.step(batch?, epoch, st, opt, data, objective)?;
            bar.step(Some(format!(
                "loss {:.4} acc {:.3}",
                st.loss_sum / st.seen as f64,
                st.correct as f64 / st.seen as f64
            )));
            let end = StepEnd { epoch, step: st.step, loss, stop: self.stop };
            for hook in self.hooks.iter_mut() {
                hook.on_step_end(&end)?;
            }
            if self.stop.is_requested() {
                bar.finish();
                st.elapsed_secs = elapsed_before + started.elapsed().as_secs_f64();
                st.dropout_word_pos = self.model.dropout_word_pos().to_string();
                self.checkpointer.commit(self.model, opt, st, false)?;
                return Err(Interrupted { epoch, batches_done: st.batches_done }.into());
            }
        }
        bar.finish();
        st.elapsed_secs = elapsed_before + started.elapsed().as_secs_f64();
        if st.seen == 0 {
            bail!("no training image could be read in epoch {epoch}");
        }
        Ok(())
    }

    /// One optimizer step on `batch`; returns its loss.
    fn step(
        &mut self,
        batch: Batch,
        epoch: usize,
        st: &mut TrainState,
        opt: &mut Optimizer,
        data: &Splits,
        objective: &Objective,
    ) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let n = batch.labels.len();
        let x = batch.images.to_device(self.device)?;
        let mut rng = batch_rng(self.spec.seed, epoch, st.batches_done);
        let (loss, logits, y) = objective.loss(self.model, x, &batch.labels, &mut rng)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            bail!(
                "the training loss became {loss_value} at epoch {epoch}, step {}: try a lower optimizer.lr",
                st.step + 1
            );
        }
        let s = self.spec;
        let lr = lr_at(s.optimizer.lr, &s.train.lr_schedule, st.step, self.steps_per_epoch(data), s.train.epochs);
        let mut grads = loss.backward()?;
        if let Some(max_norm) = s.train.clip_grad_norm {
            opt.clip_grad_norm(&mut grads, max_norm)?;
        }
        opt.step(&grads, lr)?;
        st.correct += correct(&logits, &y)?;
        st.loss_sum += loss_value * n as f64;
        st.seen += n;
        st.step += 1;
        st.batches_done += 1;
        st.compute_secs += t0.elapsed().as_secs_f64();
        Ok(loss_value)
    }

    /// Evaluates, records the epoch everywhere, keeps the best weights and commits the
    /// epoch's end.
    fn end_epoch(
        &mut self,
        epoch: usize,
        st: &mut TrainState,
        opt: &Optimizer,
        data: &Splits,
    ) -> anyhow::Result<EpochMetrics> {
        let train_secs = st.elapsed_secs;
        let validating = Instant::now();
        let val = if data.val_idx.is_empty() {
            None
        } else {
            Some(evaluate(self.model, &data.val, &data.val_idx, self.device, self.progress)?)
        };
        let m = EpochMetrics {
            epoch,
            train_loss: st.loss_sum / st.seen as f64,
            train_acc: st.correct as f64 / st.seen as f64,
            val_loss: val.as_ref().map(|v| v.loss),
            val_acc: val.as_ref().map(|v| v.acc),
            val_macro_f1: val.as_ref().and_then(|v| v.macro_f1),
            val_top5_acc: val.as_ref().and_then(|v| v.top5),
            val_classes: val.map(|v| v.classes).unwrap_or_default(),
            lr: self.lr_now(st, data),
            images_per_sec: st.seen as f64 / train_secs,
            seconds: train_secs + validating.elapsed().as_secs_f64(),
        };
        for sink in self.sinks.iter_mut() {
            sink.record(&m)?;
        }
        for hook in self.hooks.iter_mut() {
            hook.on_epoch_end(&m, self.stop)?;
        }
        self.progress.info(&epoch_line(&m, self.spec.train.epochs, st));
        let score = self.best.score(&m);
        let improved = self.best.improves(st.best_score, score);
        if improved {
            st.best_score = Some(score);
            st.best_epoch = epoch;
        }
        *st = st.next_epoch(epoch, self.model.dropout_word_pos());
        self.checkpointer.commit(self.model, opt, st, improved).context("committing the epoch's checkpoint")?;
        Ok(m)
    }
}

/// What each step minimises: cross-entropy (smoothed, weighted by class), or the soft-target
/// cross-entropy of a mixed batch.
struct Objective {
    smoothing: f64,
    classes: usize,
    /// `train.class_weights`, one per class.
    weights: Option<Tensor>,
    mixup: Option<super::mixup::MixupSpec>,
}

impl Objective {
    fn new(spec: &Spec, data: &Splits, device: &Device) -> anyhow::Result<Self> {
        let classes = spec.num_classes();
        let weights = match &spec.train.class_weights {
            None => None,
            Some(ClassWeights::Given(w)) => Some(w.iter().map(|&v| v as f32).collect()),
            Some(ClassWeights::Named(_)) => {
                let items = data.train.items();
                let labels = data.train_idx.iter().map(|&i| items[i].label.unwrap_or(0));
                Some(super::loss::balanced_class_weights(labels, classes).iter().map(|&v| v as f32).collect())
            }
        };
        let weights = weights.map(|w: Vec<f32>| Tensor::new(w, device)).transpose()?;
        Ok(Self { smoothing: spec.train.label_smoothing, classes, weights, mixup: spec.train.mixup })
    }

    /// The batch's loss, its logits, and the labels its accuracy counts against (the
    /// dominant one of a mixed image).
    fn loss(
        &self,
        model: &Model,
        x: Tensor,
        labels: &[u32],
        rng: &mut impl rand::Rng,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let device = x.device().clone();
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        if let Some(draw) = self.mixup.and_then(|m| super::mixup::draw(rng, &m, (h, w))) {
            let mixed = super::mixup::mix_images(&x, &draw)?;
            let targets = super::mixup::mix_targets(labels, self.classes, draw.lam, self.smoothing, &device)?;
            let logits = model.forward_t(&mixed, true)?;
            let loss = super::loss::soft_cross_entropy(&logits, &targets)?;
            let dominant = Tensor::new(super::mixup::dominant(labels, draw.lam), &device)?;
            return Ok((loss, logits, dominant));
        }
        let y = Tensor::new(labels, &device)?;
        let logits = model.forward_t(&x, true)?;
        let loss = match &self.weights {
            Some(w) => super::loss::weighted_cross_entropy(&logits, &y, w, self.smoothing)?,
            None => super::loss::cross_entropy(&logits, &y, self.smoothing)?,
        };
        Ok((loss, logits, y))
    }
}

/// The random stream of a batch's mixing: fixed by (seed, epoch, batch), so a resumed epoch
/// draws what the uninterrupted one would have.
fn batch_rng(seed: u64, epoch: usize, batch: usize) -> rand_chacha::ChaCha8Rng {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6d69_7875_7063_7574);
    r.set_stream(((epoch as u64) << 32) | batch as u64);
    r
}

/// The log line of an epoch.
fn epoch_line(m: &EpochMetrics, epochs: usize, st: &TrainState) -> String {
    format!(
        "epoch {}/{epochs}: train loss {:.4} acc {:.4} | val loss {} acc {} | lr {:.3e} | {:.1} img/s ({:.1} img/s compute only) | {:.1}s",
        m.epoch,
        m.train_loss,
        m.train_acc,
        m.val_loss.map_or("-".into(), |v| format!("{v:.4}")),
        m.val_acc.map_or("-".into(), |v| format!("{v:.4}")),
        m.lr,
        m.images_per_sec,
        st.seen as f64 / st.compute_secs.max(1e-9),
        m.seconds
    )
}
