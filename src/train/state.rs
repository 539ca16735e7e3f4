//! Where a training stands: what a checkpoint commits beside the weights so that a resume
//! continues exactly (epoch, batch, partial sums, schedule position, best so far, generators).

use serde::{Deserialize, Serialize};

use super::watch::{EarlyStop, Plateau};

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
    /// Best score so far (see `BestPolicy`); absent before any.
    pub best_score: Option<f64>,
    /// Position of the dropout generator's stream (a u128, as text).
    pub dropout_word_pos: String,
    /// Fingerprint of the image files the run trains on (see `Splits::data_fingerprint`).
    #[serde(default)]
    pub data_fingerprint: String,
    /// The plateau schedule's state.
    #[serde(default)]
    pub plateau: Plateau,
    /// Early stopping's state.
    #[serde(default)]
    pub early: EarlyStop,
    /// Why training stopped before its last epoch, when early stopping stopped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<String>,
}

impl TrainState {
    /// Before the first step of a run whose config has `fingerprint`.
    pub fn fresh(fingerprint: &str) -> Self {
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
            data_fingerprint: String::new(),
            plateau: Plateau::default(),
            early: EarlyStop::default(),
            stopped_early: None,
        }
    }

    /// At the boundary after `epoch`: the epoch's sums start again; the run's position and
    /// best carry over.
    pub fn next_epoch(&self, epoch: usize, dropout_word_pos: u128) -> Self {
        Self {
            epochs_done: epoch,
            step: self.step,
            best_epoch: self.best_epoch,
            best_score: self.best_score,
            dropout_word_pos: dropout_word_pos.to_string(),
            data_fingerprint: self.data_fingerprint.clone(),
            plateau: self.plateau.clone(),
            early: self.early.clone(),
            stopped_early: self.stopped_early.clone(),
            ..Self::fresh(&self.fingerprint)
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

/// A training stopped on request; its checkpoint resumes it exactly.
#[derive(Debug, thiserror::Error)]
#[error("interrupted after {batches_done} batches of epoch {epoch}; its checkpoint resumes it")]
pub struct Interrupted {
    pub epoch: usize,
    pub batches_done: usize,
}
