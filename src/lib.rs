//! ablate: deep-learning experiments on image folders, one TOML file per experiment.
//!
//! The binary is the product; this library is what it is made of, and what its tests and
//! benchmarks reach. Data flows one way (docs/ARCHITECTURE.md has the map):
//!
//! ```text
//! commands -> plan -> executor -> train -> (model, data) -> ops
//!             (config -> spec)    output implements train's traits; spec is a leaf
//! ```
//!
//! - **Commands** ([`run`], [`resume`], [`check`], [`predict`], [`summarize`], [`compare`],
//!   [`slurm`]) take what the command line parsed and do one command each.
//! - **Specs**: [`spec_from_file`] reads an experiment into a validated [`Spec`]; its layers
//!   ([`LayerConfig`]) build a [`Model`].
//! - **Training pieces** used on their own: [`Optimizer`], [`Loader`], [`EpochMetrics`].
//! - **Run folders**, read back: [`read_runs`], [`read_metrics`], [`read_scalars`],
//!   [`load_checkpoint`].
//! - **Kernels**: [`ops`], public so that their tests can force each path and prove which ran.

mod alloc;
mod commands;
mod config;
mod data;
mod device;
mod executor;
mod model;
pub mod ops;
mod output;
mod plan;
mod scaleout;
mod spec;
pub mod stats;
mod train;
mod units;

// Commands, and what they take.
pub use commands::{
    CheckOptions, Evaluated, LrFindOptions, LrFound, ResumeOptions, RunOptions, SortKey, Summarized, Which, check,
    compare, evaluate, lr_find, predict, resume, run, slurm, slurm_resume, summarize,
};
pub use executor::{Env, SinkFactory};
pub use plan::{Override, Request, experiment_files, spec_from_file};
pub use scaleout::{SlurmOptions, resolve as shard_from_env};
pub use train::{Interrupted, StopAfterSteps, StopSignal};

// Validated experiments and the models they build.
pub use model::{Model, ModelError, weights};
pub use spec::{
    ConvConfig, DeviceChoice, EarlyStoppingConfig, EmaConfig, LayerConfig, LinearConfig, Node, OptimizerConfig,
    OptimizerKind, Projection, ScheduleConfig, Shard, Spec, StageConfig, Transform,
};

// Training pieces.
pub use data::folder::labelled as labelled_images;
pub use data::loader::{ImageCache, Loader, decode};
pub use data::{augment, autoaugment};
pub use device::open as open_device;
pub use output::sink::MemorySink;
pub use train::ema::Ema;
pub use train::loss::{balanced_class_weights, cross_entropy, soft_cross_entropy, weighted_cross_entropy};
pub use train::optim::{Optimizer, lr_at};
pub use train::{EpochMetrics, Hook, MetricSink};
pub use train::{mixup, watch};

// What a run folder holds, read back.
pub use output::checkpoint::load as load_checkpoint;
pub use output::kernel_plan::{
    VERSION as KERNEL_CACHE_VERSION, cache_path as kernel_cache_path, configure_from_env as configure_kernel_tuning,
};
pub use output::sink::CsvSink;
pub use output::summary::{Row as SummaryRow, Status, read as read_runs};
pub use output::tensorboard::{Scalar, event_files, read_scalars};

/// The rows of a variant's `metrics.csv`.
pub fn read_metrics(path: &std::path::Path) -> anyhow::Result<Vec<EpochMetrics>> {
    CsvSink::read(path)
}

/// Keeps freed memory in the process (see the allocator note in `main.rs`).
pub fn keep_freed_memory() {
    alloc::keep_freed_memory();
}
