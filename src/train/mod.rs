//! Training: the loop, optimizers and schedules, evaluation and prediction.

pub mod optim;
pub mod trainer;

pub use trainer::{FitOutcome, Splits, evaluate, fit, predict};
