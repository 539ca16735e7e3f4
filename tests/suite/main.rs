//! ablate's integration tests: one binary, one module per concern. Fixtures build tiny image
//! folders in temporary directories.

mod ablation;
mod augment;
mod cli;
mod common;
mod config_errors;
mod crash;
mod determinism;
mod gradients;
mod graph;
mod learning;
mod mixup;
mod parity;
mod recipes;
mod resume;
mod shapes;
mod shards;
mod stateful;
mod stats;
mod sweep;
mod tensorboard;
mod tuning;
mod weights;
mod zoo;
