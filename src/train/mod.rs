//! Training: the learner, its components (as traits), optimizers and schedules, evaluation.

pub mod components;
pub mod eval;
pub mod learner;
pub mod optim;
pub mod state;

pub use components::{
    Bar, BestPolicy, Checkpointer, EpochMetrics, Hook, MetricSink, Progress, StepEnd, StopAfterSteps, StopSignal,
};
pub use eval::{evaluate, predict};
pub use learner::{FitOutcome, Learner, Splits};
pub use state::{Interrupted, TrainState, fingerprint};
