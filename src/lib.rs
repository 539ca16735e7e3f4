//! ablate: deep-learning experiments on image folders, one TOML file per experiment.
//!
//! The pipeline reads top to bottom: [`config`] resolves a TOML file into a validated spec,
//! [`model`] builds the network from it, [`data`] feeds images, [`train`] drives both, and
//! [`output`] records what happened under `runs/`. [`ops`] holds the CPU kernels the model uses.

pub mod alloc;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod experiment;
pub mod model;
pub mod ops;
pub mod output;
pub mod scaleout;
pub mod train;
