//! What the learner needs from the world, as traits: where metrics go, where checkpoints go,
//! how progress shows, when to stop, and hooks for training features. `output` implements
//! the first three for a run folder; tests implement them in memory.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::optim::Optimizer;
use super::state::TrainState;
use crate::model::Model;
use crate::spec::Monitor;
use crate::stats::ClassScore;

/// One epoch's metrics; `metrics.csv` has exactly these columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Empty when the experiment holds out no validation images.
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Training images per second (forward, backward, update).
    pub images_per_sec: f64,
    /// Wall time of the epoch, training and validation.
    pub seconds: f64,
    /// Mean F1 over the classes, on the validation images.
    #[serde(default)]
    pub val_macro_f1: Option<f64>,
    /// Share of validation images whose class is among the 5 highest logits (more than 5
    /// classes only).
    #[serde(default)]
    pub val_top5_acc: Option<f64>,
    /// Each class's precision, recall and F1 on the validation images, for TensorBoard
    /// (`val/precision/<class>`, ...); not columns of `metrics.csv`.
    #[serde(skip)]
    pub val_classes: Vec<ClassScore>,
}

impl EpochMetrics {
    /// The value of `monitor` this epoch, if it has it.
    pub fn watched(&self, monitor: Monitor) -> Option<f64> {
        match monitor {
            Monitor::ValLoss => self.val_loss,
            Monitor::ValAcc => self.val_acc,
            Monitor::ValMacroF1 => self.val_macro_f1,
            Monitor::TrainLoss => Some(self.train_loss),
            Monitor::TrainAcc => Some(self.train_acc),
        }
    }
}

/// Receives each epoch's metrics as the run goes.
pub trait MetricSink {
    fn record(&mut self, m: &EpochMetrics) -> anyhow::Result<()>;
    /// A picture of the run at `epoch` (PNG bytes): the validation confusion matrix, the most
    /// confident mistakes.
    fn image(&mut self, _tag: &str, _png: &[u8], _epoch: usize) -> anyhow::Result<()> {
        Ok(())
    }
    /// The run ended (`ok` = trained to the end).
    fn finish(&mut self, _ok: bool) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Where a training's resumable state and best weights are kept.
pub trait Checkpointer {
    /// The state a previous attempt committed; `None` to start afresh.
    fn committed(&self) -> anyhow::Result<Option<TrainState>>;
    /// Loads the committed model and optimizer tensors (after [`Checkpointer::committed`]);
    /// returns the committed weights' average, if the run keeps one.
    fn restore(&mut self, model: &Model, opt: &mut Optimizer) -> anyhow::Result<Option<HashMap<String, Tensor>>>;
    /// Commits model, optimizer, the weights' average `ema` (when kept) and `state` together
    /// (`best`: these weights, or their average, are the best so far): a later
    /// [`Checkpointer::restore`] sees all of them or the previous commit.
    fn commit(
        &mut self,
        model: &Model,
        opt: &Optimizer,
        state: &TrainState,
        best: bool,
        ema: Option<&HashMap<String, Tensor>>,
    ) -> anyhow::Result<()>;
    /// Records the convolution kernel plan (`ops::conv::tune`) where the run keeps it, when
    /// it grew; the learner calls it after every step and before every commit, so nothing
    /// committed was computed with a plan the run folder does not hold. Returns a line for
    /// the log when kernels were timed.
    fn record_kernel_plan(&mut self) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
}

/// Lines and progress bars for whoever watches.
pub trait Progress {
    /// One line of the log.
    fn info(&self, line: &str);
    /// A bar of `len` steps, labelled.
    fn bar(&self, label: String, len: usize) -> Box<dyn Bar>;
}

/// A progress bar [`Progress::bar`] made.
pub trait Bar {
    fn set_position(&self, pos: usize);
    /// One step done; `message` shows beside the bar.
    fn step(&self, message: Option<String>);
    /// Removes the bar.
    fn finish(&self);
}

/// A stop request, shared between whoever asks (Ctrl-C, SIGTERM, a test, a hook) and the
/// learner, which finishes its step, commits a resumable checkpoint and returns
/// [`super::Interrupted`]. Each process (or test) makes its own.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// Asks the learner to stop; returns whether a stop had been asked already.
    pub fn request(&self) -> bool {
        self.0.swap(true, Ordering::Relaxed)
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where a step ended: what a [`Hook`] sees.
#[derive(Debug)]
pub struct StepEnd<'a> {
    pub epoch: usize,
    /// Optimizer steps taken, this one included.
    pub step: usize,
    /// This batch's loss.
    pub loss: f64,
    pub stop: &'a StopSignal,
}

/// A training feature that acts at step or epoch ends (EMA, early stopping, clipping, a stop
/// after N steps). Both methods default to doing nothing.
pub trait Hook {
    fn on_step_end(&mut self, _step: &StepEnd) -> anyhow::Result<()> {
        Ok(())
    }
    fn on_epoch_end(&mut self, _metrics: &EpochMetrics, _stop: &StopSignal) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Testing and debugging aid: requests a stop after this many steps, counted over every
/// training it is handed to (a sweep's variants in turn), exactly as Ctrl-C would.
#[derive(Debug, Clone)]
pub struct StopAfterSteps {
    pub remaining: usize,
}

impl Hook for StopAfterSteps {
    fn on_step_end(&mut self, step: &StepEnd) -> anyhow::Result<()> {
        self.remaining = self.remaining.saturating_sub(1);
        if self.remaining == 0 {
            step.stop.request();
        }
        Ok(())
    }
}

/// Which epoch's weights are "best": the highest validation accuracy (ties keep the earlier
/// epoch); without a hold-out, the lowest training loss.
#[derive(Debug, Clone, Copy, Default)]
pub struct BestPolicy;

impl BestPolicy {
    /// The epoch's score: higher is better.
    pub fn score(self, m: &EpochMetrics) -> f64 {
        m.val_acc.unwrap_or(-m.train_loss)
    }

    /// Whether `score` beats the best so far.
    pub fn improves(self, best: Option<f64>, score: f64) -> bool {
        best.is_none_or(|b| score > b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(val_acc: Option<f64>, train_loss: f64) -> EpochMetrics {
        EpochMetrics {
            epoch: 1,
            train_loss,
            train_acc: 0.0,
            val_loss: None,
            val_acc,
            lr: 0.0,
            images_per_sec: 0.0,
            seconds: 0.0,
            val_macro_f1: None,
            val_top5_acc: None,
            val_classes: Vec::new(),
        }
    }

    #[test]
    fn best_is_by_validation_accuracy_ties_keep_the_earlier() {
        let p = BestPolicy;
        let first = p.score(&epoch(Some(0.7), 0.5));
        assert!(p.improves(None, first));
        assert!(!p.improves(Some(first), p.score(&epoch(Some(0.7), 0.1))), "a tie keeps the earlier epoch");
        assert!(p.improves(Some(first), p.score(&epoch(Some(0.71), 0.9))));
        // Without a hold-out: lower training loss wins.
        assert!(p.improves(Some(p.score(&epoch(None, 0.5))), p.score(&epoch(None, 0.4))));
    }

    #[test]
    fn stop_after_steps_requests_a_stop_on_the_nth_step() {
        let stop = StopSignal::default();
        let mut hook = StopAfterSteps { remaining: 2 };
        let at = |step| StepEnd { epoch: 1, step, loss: 0.0, stop: &stop };
        hook.on_step_end(&at(1)).unwrap();
        assert!(!stop.is_requested());
        hook.on_step_end(&at(2)).unwrap();
        assert!(stop.is_requested());
        assert!(stop.request(), "a second request reports the first");
    }
}
