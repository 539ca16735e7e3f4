//! Training: the loop, optimizers and schedules, evaluation and prediction.

pub mod optim;
pub mod trainer;

pub use trainer::{
    FitOutcome, Interrupted, STOP, STOP_AFTER_STEPS, Splits, TrainState, evaluate, fingerprint, fit, load_state,
    predict,
};
