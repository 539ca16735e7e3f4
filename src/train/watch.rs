//! Decisions made on an epoch's metrics, with the state a checkpoint keeps so that a resume
//! decides the same: PyTorch's `ReduceLROnPlateau` and Lightning's `EarlyStopping`.

use serde::{Deserialize, Serialize};

use crate::spec::{EarlyStoppingConfig, ScheduleConfig, ThresholdMode};

/// `ReduceLROnPlateau`'s state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// The rate after the reductions so far; `None` before the first.
    pub lr: Option<f64>,
    pub best: Option<f64>,
    pub bad_epochs: usize,
    pub cooldown: usize,
}

impl Plateau {
    /// `ReduceLROnPlateau.step(current)` for a schedule starting at `base_lr`: the new rate when
    /// this epoch reduces it.
    pub fn step(&mut self, s: &ScheduleConfig, base_lr: f64, current: f64) -> Option<f64> {
        let min = s.monitor.minimises();
        let best = self.best.unwrap_or(if min { f64::INFINITY } else { f64::NEG_INFINITY });
        let better = match (s.threshold_mode, min) {
            (ThresholdMode::Rel, true) => current < best * (1.0 - s.threshold),
            (ThresholdMode::Rel, false) => current > best * (s.threshold + 1.0),
            (ThresholdMode::Abs, true) => current < best - s.threshold,
            (ThresholdMode::Abs, false) => current > best + s.threshold,
        };
        if better {
            self.best = Some(current);
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        if self.cooldown > 0 {
            self.cooldown -= 1;
            self.bad_epochs = 0;
        }
        if self.bad_epochs <= s.patience {
            return None;
        }
        self.cooldown = s.cooldown;
        self.bad_epochs = 0;
        let old = self.lr.unwrap_or(base_lr);
        let new = (old * s.gamma).max(s.min_lr);
        // PyTorch's eps: a reduction smaller than 1e-8 is not made.
        (old - new > 1e-8).then(|| {
            self.lr = Some(new);
            new
        })
    }
}

/// `EarlyStopping`'s state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EarlyStop {
    pub best: Option<f64>,
    pub wait: usize,
}

impl EarlyStop {
    /// After an epoch whose watched value is `current`: why training stops, if it does.
    pub fn step(&mut self, cfg: &EarlyStoppingConfig, current: f64) -> Option<String> {
        let tag = cfg.monitor.tag();
        if !current.is_finite() {
            return Some(format!("{tag} = {current} is not finite"));
        }
        let improved = match (self.best, cfg.monitor.minimises()) {
            (None, _) => true,
            (Some(best), true) => current + cfg.min_delta < best,
            (Some(best), false) => current - cfg.min_delta > best,
        };
        if improved {
            self.best = Some(current);
            self.wait = 0;
            return None;
        }
        self.wait += 1;
        (self.wait >= cfg.patience).then(|| {
            format!(
                "{tag} did not improve by more than {} for {} epochs (best {:.6})",
                cfg.min_delta,
                self.wait,
                self.best.unwrap_or(f64::NAN)
            )
        })
    }
}
