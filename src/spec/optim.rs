//! Optimizer and learning-rate schedule settings: read straight from the TOML (every value
//! serde accepts is one `resolve` range-checks) and used as they are by `train::optim`.

use serde::{Deserialize, Serialize};

/// Optimizer choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam; `weight_decay` adds an L2 term to the gradient, as PyTorch's `Adam`.
    Adam,
    /// Adam with decoupled weight decay, as PyTorch's `AdamW`.
    Adamw,
    /// Stochastic gradient descent with optional momentum / Nesterov and L2 weight decay.
    Sgd,
}

/// Optimizer hyper-parameters (PyTorch's defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Which optimizer.
    #[serde(default = "default_optimizer")]
    pub kind: OptimizerKind,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Weight decay (L2 for adam/sgd, decoupled for adamw).
    #[serde(default)]
    pub weight_decay: f64,
    /// Adam's (beta1, beta2).
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Adam's epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f64,
    /// SGD Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
    /// Parameters without weight decay: `"bias"` (every `*.bias`), `"norm"` (every 1-D
    /// parameter: normalisation layers' weights and biases), or a parameter-name prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_decay: Vec<String>,
    /// Learning-rate multipliers by parameter-name prefix (the longest matching prefix wins;
    /// 1 for the others): fastai's discriminative learning rates.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lr_mult: std::collections::BTreeMap<String, f64>,
}

impl OptimizerConfig {
    /// The weight decay and learning-rate multiplier of the parameter `name` of `rank`
    /// dimensions.
    pub fn group_of(&self, name: &str, rank: usize) -> (f64, f64) {
        let exempt = self.no_decay.iter().any(|rule| match rule.as_str() {
            "bias" => name == "bias" || name.ends_with(".bias"),
            "norm" => rank <= 1,
            prefix => name.starts_with(prefix),
        });
        let mult = self.lr_mult.iter().filter(|(p, _)| name.starts_with(p.as_str())).max_by_key(|(p, _)| p.len());
        (if exempt { 0.0 } else { self.weight_decay }, mult.map_or(1.0, |(_, m)| *m))
    }
}

fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adam
}
fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: default_optimizer(),
            lr: default_lr(),
            weight_decay: 0.0,
            betas: default_betas(),
            eps: default_eps(),
            momentum: 0.0,
            nesterov: false,
            no_decay: Vec::new(),
            lr_mult: Default::default(),
        }
    }
}

/// Schedule kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The same rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` every `step_epochs` epochs.
    Step,
    /// Cosine decay from `lr` to `min_lr` over the epochs after warm-up.
    Cosine,
    /// Multiply by `gamma` every epoch (PyTorch's `ExponentialLR`, stepped per epoch).
    Exponential,
    /// Multiply by `gamma` at each epoch of `milestones` (PyTorch's `MultiStepLR`).
    Multistep,
    /// PyTorch's `OneCycleLR` over every step (cosine, two phases, `lr` as `max_lr`; the
    /// momentum is not cycled: `cycle_momentum=False`).
    OneCycle,
    /// Multiply by `gamma` when `monitor` has not improved for `patience` epochs (PyTorch's
    /// `ReduceLROnPlateau`, stepped after each epoch's validation; `min_lr` its floor).
    Plateau,
}

/// How `plateau` judges an improvement: relative (`best · (1 ∓ threshold)`) or absolute
/// (`best ∓ threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMode {
    #[default]
    Rel,
    Abs,
}

/// Learning-rate schedule settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Schedule shape.
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Epochs of linear warm-up from 0 to `lr` (any kind).
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Step schedule: epochs between decays.
    #[serde(default = "default_step_epochs")]
    pub step_epochs: usize,
    /// Step schedule: decay factor.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// Cosine schedule: final rate.
    #[serde(default)]
    pub min_lr: f64,
    /// Multistep schedule: the epochs (0-based, as PyTorch counts them) at which the rate is
    /// multiplied by `gamma`.
    #[serde(default)]
    pub milestones: Vec<usize>,
    /// One-cycle schedule: the share of the steps spent rising to `lr`.
    #[serde(default = "default_pct_start")]
    pub pct_start: f64,
    /// One-cycle schedule: the starting rate is `lr / div_factor`.
    #[serde(default = "default_div_factor")]
    pub div_factor: f64,
    /// One-cycle schedule: the final rate is the starting one `/ final_div_factor`.
    #[serde(default = "default_final_div_factor")]
    pub final_div_factor: f64,
    /// Plateau schedule: the metric watched.
    #[serde(default)]
    pub monitor: super::Monitor,
    /// Plateau schedule: epochs without improvement tolerated.
    #[serde(default = "default_patience")]
    pub patience: usize,
    /// Plateau schedule: the least improvement that counts.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default)]
    pub threshold_mode: ThresholdMode,
    /// Plateau schedule: epochs after a reduction before counting again.
    #[serde(default)]
    pub cooldown: usize,
}

fn default_patience() -> usize {
    10
}
fn default_threshold() -> f64 {
    1e-4
}

fn default_pct_start() -> f64 {
    0.3
}
fn default_div_factor() -> f64 {
    25.0
}
fn default_final_div_factor() -> f64 {
    1e4
}

fn default_step_epochs() -> usize {
    30
}
fn default_gamma() -> f64 {
    0.1
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Constant,
            warmup_epochs: 0.0,
            step_epochs: default_step_epochs(),
            gamma: default_gamma(),
            min_lr: 0.0,
            milestones: Vec::new(),
            pct_start: default_pct_start(),
            div_factor: default_div_factor(),
            final_div_factor: default_final_div_factor(),
            monitor: super::Monitor::default(),
            patience: default_patience(),
            threshold: default_threshold(),
            threshold_mode: ThresholdMode::default(),
            cooldown: 0,
        }
    }
}
