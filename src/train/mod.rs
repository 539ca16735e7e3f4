//! Training: the learner, its components (as traits), optimizers and schedules, evaluation.

pub mod components;
pub mod ema;
pub mod eval;
pub mod learner;
pub mod loss;
pub mod lr_find;
pub mod mixup;
pub mod optim;
pub mod state;
pub mod watch;

pub use components::{Bar, Checkpointer, EpochMetrics, Hook, MetricSink, Progress, StopAfterSteps, StopSignal};
pub use eval::predict;
pub use learner::{FitOutcome, Learner, Splits};
pub use state::{Interrupted, TrainState, fingerprint};
