//! Settings of the training recipe pieces that keep state across steps and epochs: the
//! weights' moving average, early stopping and the metric they (and `plateau`) watch.

use serde::{Deserialize, Serialize};

/// `train.ema`: an exponential moving average of the weights, evaluated, checkpointed and
/// used for predictions (timm's `ModelEmaV2`; with `warmup`, `ModelEmaV3`'s warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// Weight of the average at each step: `ema = decay · ema + (1 − decay) · weights`.
    #[serde(default = "default_decay")]
    pub decay: f64,
    /// Start with a smaller decay, `1 − step^(−2/3)` after `step + 1` updates (the first
    /// update copies the weights), growing to `decay` (timm's `ModelEmaV3(use_warmup=True)`).
    #[serde(default)]
    pub warmup: bool,
}

fn default_decay() -> f64 {
    0.9998
}

impl EmaConfig {
    /// The decay of the update after `step` optimizer steps (this one included, so 1 at the
    /// first), as `ModelEmaV3.get_decay(step)` with `warmup_gamma = 1`, `warmup_power = 2/3`.
    pub fn decay_at(&self, step: usize) -> f64 {
        if !self.warmup {
            return self.decay;
        }
        let s = step.saturating_sub(1);
        if s == 0 {
            return 0.0;
        }
        (1.0 - (1.0 + s as f64).powf(-2.0 / 3.0)).min(self.decay).max(0.0)
    }
}

/// `train.early_stopping` (Lightning's `EarlyStopping`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingConfig {
    #[serde(default)]
    pub monitor: Monitor,
    /// Epochs without improvement before stopping.
    #[serde(default = "default_patience")]
    pub patience: usize,
    /// The least change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

fn default_patience() -> usize {
    3
}

/// An epoch metric to watch, by its TensorBoard tag; losses improve downwards, the rest
/// upwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Monitor {
    #[default]
    #[serde(rename = "val/loss")]
    ValLoss,
    #[serde(rename = "val/acc")]
    ValAcc,
    #[serde(rename = "val/macro_f1")]
    ValMacroF1,
    #[serde(rename = "train/loss")]
    TrainLoss,
    #[serde(rename = "train/acc")]
    TrainAcc,
}

impl Monitor {
    /// Whether smaller values are better.
    pub fn minimises(self) -> bool {
        matches!(self, Self::ValLoss | Self::TrainLoss)
    }

    /// Whether the metric needs validation images.
    pub fn validates(self) -> bool {
        matches!(self, Self::ValLoss | Self::ValAcc | Self::ValMacroF1)
    }

    pub fn tag(self) -> &'static str {
        match self {
            Self::ValLoss => "val/loss",
            Self::ValAcc => "val/acc",
            Self::ValMacroF1 => "val/macro_f1",
            Self::TrainLoss => "train/loss",
            Self::TrainAcc => "train/acc",
        }
    }
}
