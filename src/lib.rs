//! ablate: deep-learning experiments on image folders, one TOML file per experiment.
//!
//! The pipeline reads top to bottom: [`config`] resolves TOML files into validated
//! [`spec::Spec`]s, [`plan`] turns experiment files x sweep x shard into variant plans, the
//! [`executor`] trains each plan into its [`output`] folder with the [`train`] learner, which
//! drives the [`model`] over [`data`]; [`ops`] holds the CPU kernels. [`commands`] are what the
//! binary calls. docs/ARCHITECTURE.md maps the modules and their invariants.

pub mod alloc;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod executor;
pub mod model;
pub mod ops;
pub mod output;
pub mod plan;
pub mod scaleout;
pub mod spec;
pub mod train;
pub mod units;
