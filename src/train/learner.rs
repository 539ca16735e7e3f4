//! The learner: epochs of seeded shuffled batches, evaluation on the hold-out, metrics to
//! every sink, checkpoints committed at each epoch's end (and on a stop request).
//!
//! It knows the world only through the traits of [`super::components`]; `fit` is three
//! steps: [`Learner::train_epoch`], [`Learner::end_epoch`] (evaluate, record, keep the best,
//! commit), repeated, after [`Learner::start`] (fresh or restored).

use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use candle_nn::ModuleT;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::components::{BestPolicy, Checkpointer, EpochMetrics, Hook, MetricSink, Progress, StepEnd, StopSignal};
use super::ema::Ema;
use super::eval::{correct, evaluate};
use super::optim::{Optimizer, lr_at};
use super::state::{Interrupted, TrainState, fingerprint};
use crate::data::loader::{Batch, Loader};
use crate::model::Model;
use crate::spec::{ClassWeights, ScheduleKind, Spec};

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
    /// When and why early stopping ended the training.
    pub stopped_early: Option<String>,
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
        let mut w = Working {
            // Every parameter: a frozen one gets no gradient (see `step`) until it is unfrozen.
            opt: Optimizer::new(self.spec.optimizer.clone(), self.model.params()),
            ema: self.spec.train.ema.map(|c| Ema::new(c, self.model)).transpose()?,
            objective: Objective::new(self.spec, data, self.device)?,
        };
        let (mut st, mut history) = self.start(&mut w, resume, history)?;
        st.data_fingerprint = data.data_fingerprint.clone();
        for epoch in st.epochs_done + 1..=self.spec.train.epochs {
            if st.stopped_early.is_some() {
                break;
            }
            if let Some(u) = self.spec.unfreeze_epoch.filter(|&u| epoch >= u && self.model.has_frozen()) {
                self.model.unfreeze();
                self.progress
                    .info(&format!("epoch {epoch}: every layer trains from now on (model.unfreeze_epoch = {u})"));
            }
            self.train_epoch(epoch, &mut st, &mut w, data)?;
            let m = self.end_epoch(epoch, &mut st, &w, data)?;
            history.push(m);
        }
        Ok(FitOutcome { epochs: history, best_epoch: st.best_epoch, test: None, stopped_early: st.stopped_early })
    }

    /// A fresh state, or the committed one with model, optimizer and average restored to it
    /// (a config that changed since is refused).
    fn start(
        &mut self,
        w: &mut Working,
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
        let average = self.checkpointer.restore(self.model, &mut w.opt)?;
        match (&mut w.ema, average) {
            (Some(ema), Some(saved)) => ema.load(&saved)?,
            (Some(_), None) => bail!("the checkpoint holds no ema.safetensors, but train.ema is set"),
            _ => {}
        }
        self.model.set_dropout_word_pos(st.dropout_word_pos.parse().context("state.toml: dropout_word_pos")?);
        self.progress.info(&format!("resuming after {} epochs and {} batches", st.epochs_done, st.batches_done));
        Ok((st, history))
    }

    fn batches_per_epoch(&self, data: &Splits) -> usize {
        data.train_idx.len().div_ceil(self.spec.data.batch_size)
    }

    /// Optimizer steps per epoch: one per `train.accumulate` batches.
    fn steps_per_epoch(&self, data: &Splits) -> usize {
        self.batches_per_epoch(data).div_ceil(self.spec.train.accumulate)
    }

    /// The learning rate of optimizer step `step` (0-based), after the plateau's reductions.
    fn lr_of_step(&self, step: usize, st: &TrainState, data: &Splits) -> f64 {
        let s = self.spec;
        let base = st.plateau.lr.unwrap_or(s.optimizer.lr);
        lr_at(base, &s.train.lr_schedule, step, self.steps_per_epoch(data), s.train.epochs)
    }

    /// The epoch's remaining batches in its seeded order; on a stop request, commits (after
    /// the accumulation group in progress) and returns [`Interrupted`].
    fn train_epoch(&mut self, epoch: usize, st: &mut TrainState, w: &mut Working, data: &Splits) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut order = data.train_idx.clone();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(self.spec.seed.wrapping_add(epoch as u64)));
        // A resumed epoch skips the batches it already trained on (the order is seeded).
        let order = order.split_off((st.batches_done * self.spec.data.batch_size).min(order.len()));
        let bar = self.progress.bar(format!("epoch {epoch}/{}", self.spec.train.epochs), self.batches_per_epoch(data));
        bar.set_position(st.batches_done);
        let elapsed_before = st.elapsed_secs;
        let mut pending = None;
        for batch in data.train.batches(order, epoch as u64) {
            let loss = self.step(batch?, epoch, st, w, data, &mut pending)?;
            self.record_kernel_plan()?;
            bar.step(Some(format!(
                "loss {:.4} acc {:.3}",
                st.loss_sum / st.seen as f64,
                st.correct as f64 / st.seen as f64
            )));
            let end = StepEnd { epoch, step: st.step, loss, stop: self.stop };
            for hook in self.hooks.iter_mut() {
                hook.on_step_end(&end)?;
            }
            if self.stop.is_requested() && pending.is_none() {
                bar.finish();
                st.elapsed_secs = elapsed_before + started.elapsed().as_secs_f64();
                st.dropout_word_pos = self.model.dropout_word_pos().to_string();
                self.record_kernel_plan()?;
                self.checkpointer.commit(self.model, &w.opt, st, false, w.average().as_ref())?;
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

    /// Forward and backward on `batch`, its gradients added to `pending`; at the end of an
    /// accumulation group, one optimizer step (and the average's update). Returns the loss.
    fn step(
        &mut self,
        batch: Batch,
        epoch: usize,
        st: &mut TrainState,
        w: &mut Working,
        data: &Splits,
        pending: &mut Option<GradStore>,
    ) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let n = batch.labels.len();
        let x = batch.images.to_device(self.device)?;
        let mut rng = batch_rng(self.spec.seed, epoch, st.batches_done);
        let (loss, logits, y) = w.objective.loss(self.model, x, &batch.labels, &mut rng)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            bail!(
                "the training loss became {loss_value} at epoch {epoch}, step {}: try a lower optimizer.lr",
                st.step + 1
            );
        }
        let (group_images, group_ends) = self.group(st.batches_done, data);
        // Each batch weighs by its images in the group: the group's gradient is that of one
        // batch of all its images (with one group, the loss itself).
        let whole = self.spec.train.accumulate == 1 || group_images == n;
        let loss = if whole { loss } else { (loss * (n as f64 / group_images as f64))? };
        let mut grads = loss.backward()?;
        if self.model.has_frozen() {
            for (name, var) in self.model.params() {
                if self.model.is_frozen(&name) {
                    grads.remove(&var);
                }
            }
        }
        *pending = Some(match pending.take() {
            None => grads,
            Some(sum) => add_grads(sum, &grads, &self.model.trainable())?,
        });
        if group_ends {
            let mut grads = pending.take().expect("just set");
            if let Some(max_norm) = self.spec.train.clip_grad_norm {
                w.opt.clip_grad_norm(&mut grads, max_norm)?;
            }
            w.opt.step(&grads, self.lr_of_step(st.step, st, data))?;
            st.step += 1;
            if let Some(ema) = &mut w.ema {
                ema.update(self.model, st.step)?;
            }
        }
        st.correct += correct(&logits, &y)?;
        st.loss_sum += loss_value * n as f64;
        st.seen += n;
        st.batches_done += 1;
        st.compute_secs += t0.elapsed().as_secs_f64();
        Ok(loss_value)
    }

    /// Has the checkpointer record the kernel plan if it grew, logging what was timed.
    fn record_kernel_plan(&mut self) -> anyhow::Result<()> {
        if let Some(line) = self.checkpointer.record_kernel_plan()? {
            self.progress.info(&line);
        }
        Ok(())
    }

    /// For the epoch's batch `b` (0-based): the images of its accumulation group, and whether
    /// it is the group's last batch.
    fn group(&self, b: usize, data: &Splits) -> (usize, bool) {
        let (k, size, total) = (self.spec.train.accumulate, self.spec.data.batch_size, data.train_idx.len());
        let batches = self.batches_per_epoch(data);
        let first = b / k * k;
        let end = (first + k).min(batches);
        let images = (first..end).map(|j| size.min(total - j * size)).sum();
        (images, b + 1 == end)
    }

    /// Evaluates (the weights' average, when kept), records the epoch everywhere, steps the
    /// plateau schedule and early stopping, keeps the best weights and commits the epoch's end.
    fn end_epoch(
        &mut self,
        epoch: usize,
        st: &mut TrainState,
        w: &Working,
        data: &Splits,
    ) -> anyhow::Result<EpochMetrics> {
        let train_secs = st.elapsed_secs;
        let validating = Instant::now();
        let val = if data.val_idx.is_empty() {
            None
        } else {
            let tta = self.spec.predict.validation_tta();
            let run = || evaluate(self.model, &data.val, &data.val_idx, (self.device, tta), self.progress);
            Some(match &w.ema {
                Some(ema) => ema.with_weights(self.model, run)?,
                None => run()?,
            })
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
            lr: self.lr_of_step(st.step.saturating_sub(1), st, data),
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
        self.watch(&m, st);
        let score = self.best.score(&m);
        let improved = self.best.improves(st.best_score, score);
        if improved {
            st.best_score = Some(score);
            st.best_epoch = epoch;
        }
        *st = st.next_epoch(epoch, self.model.dropout_word_pos());
        self.record_kernel_plan()?;
        self.checkpointer
            .commit(self.model, &w.opt, st, improved, w.average().as_ref())
            .context("committing the epoch's checkpoint")?;
        Ok(m)
    }

    /// Steps the plateau schedule and early stopping on the epoch's metrics.
    fn watch(&self, m: &EpochMetrics, st: &mut TrainState) {
        let s = &self.spec.train;
        if s.lr_schedule.kind == ScheduleKind::Plateau
            && let Some(v) = m.watched(s.lr_schedule.monitor)
            && let Some(lr) = st.plateau.step(&s.lr_schedule, self.spec.optimizer.lr, v)
        {
            self.progress.info(&format!(
                "plateau: {} has not improved for {} epochs; learning rate reduced to {lr:.3e}",
                s.lr_schedule.monitor.tag(),
                s.lr_schedule.patience + 1
            ));
        }
        if let Some(es) = &s.early_stopping
            && let Some(v) = m.watched(es.monitor)
            && let Some(reason) = st.early.step(es, v)
            && m.epoch < s.epochs
        {
            self.progress.info(&format!("early stopping after epoch {}: {reason}", m.epoch));
            st.stopped_early = Some(format!("after epoch {}: {reason}", m.epoch));
        }
    }
}

/// What a training keeps beside its state: the optimizer, the weights' average and the loss.
struct Working {
    opt: Optimizer,
    ema: Option<Ema>,
    objective: Objective,
}

impl Working {
    fn average(&self) -> Option<std::collections::HashMap<String, Tensor>> {
        self.ema.as_ref().map(Ema::tensors)
    }
}

/// `sum` plus the gradients of `params` in `more`.
fn add_grads(
    mut sum: GradStore,
    more: &GradStore,
    params: &[(String, candle_core::Var)],
) -> candle_core::Result<GradStore> {
    for (_, var) in params {
        if let Some(g) = more.get(var) {
            let total = match sum.get(var) {
                Some(s) => (s + g)?,
                None => g.clone(),
            };
            sum.insert(var, total);
        }
    }
    Ok(sum)
}

/// What each step minimises: cross-entropy (smoothed, weighted by class), or the soft-target
/// cross-entropy of a mixed batch.
pub(super) struct Objective {
    smoothing: f64,
    classes: usize,
    /// `train.class_weights`, one per class.
    weights: Option<Tensor>,
    mixup: Option<super::mixup::MixupSpec>,
}

impl Objective {
    pub(super) fn new(spec: &Spec, data: &Splits, device: &Device) -> anyhow::Result<Self> {
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
    pub(super) fn loss(
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
pub(super) fn batch_rng(seed: u64, epoch: usize, batch: usize) -> rand_chacha::ChaCha8Rng {
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
