//! Command-line interface: `ablate run | check | predict`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::experiment::Which;
use crate::scaleout::Shard;

/// Deep-learning experiments on image folders, one TOML file per experiment.
#[derive(Debug, Parser)]
#[command(name = "ablate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The experiments `run` and `slurm` take, with their overrides and sweep axes.
#[derive(Debug, clap::Args)]
pub struct Experiments {
    /// Experiment files (TOML), or folders of them (files starting with `_` skipped).
    #[arg(required = true)]
    pub experiments: Vec<PathBuf>,
    /// Override a config key: `--set optimizer.lr=3e-4` (values parse as TOML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Sweep a key over values: `--sweep model.params.groups=1,2,4` (adds to or replaces an
    /// axis of the file's [sweep]).
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    pub sweep: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the experiment(s) into a new folder under runs/ (several: one folder, one summary).
    Run {
        #[command(flatten)]
        what: Experiments,
        /// `auto`, `cpu`, `cuda` or `cuda:N` (overrides train.device).
        #[arg(long)]
        device: Option<String>,
        /// Where run folders are created.
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
        /// Stop the sweep at the first failing variant (default: mark it failed and go on).
        #[arg(long)]
        fail_fast: bool,
        /// Train only the variants whose index is I modulo N (0 <= I < N) into the run folder
        /// named by --run-id. Default: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT.
        #[arg(long, value_name = "I/N")]
        shard: Option<Shard>,
        /// Use the run folder <runs-dir>/<ID>_<name>, shared by the shards of one sweep.
        /// Default: $SLURM_ARRAY_JOB_ID.
        #[arg(long, value_name = "ID")]
        run_id: Option<String>,
        /// Testing aid: stop as Ctrl-C would after this many training steps.
        #[arg(long, hide = true)]
        stop_after_steps: Option<usize>,
    },
    /// Merge a sharded run's summaries (or redraw a run's) into summary.csv, .md and .png.
    Summarize {
        /// The run folder.
        run: PathBuf,
    },
    /// Print a bash script that submits the experiment(s) to Slurm: a job array with one
    /// variant per task, then a job that runs `ablate summarize`.
    Slurm {
        #[command(flatten)]
        what: Experiments,
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
        /// Slurm partition.
        #[arg(long)]
        partition: Option<String>,
        /// GPUs per task (one variant per task).
        #[arg(long)]
        gpus_per_task: Option<u32>,
        #[arg(long)]
        cpus_per_task: Option<u32>,
        /// Time limit per task, e.g. 4:00:00.
        #[arg(long)]
        time: Option<String>,
        /// Any other #SBATCH option, e.g. --sbatch account=abc (repeatable).
        #[arg(long, value_name = "OPTION")]
        sbatch: Vec<String>,
    },
    /// Finish an interrupted run or sweep: finished variants are kept, failed ones train again,
    /// an interrupted one continues from its checkpoint.
    Resume {
        /// The run folder.
        run: PathBuf,
        /// `auto`, `cpu`, `cuda` or `cuda:N`.
        #[arg(long)]
        device: Option<String>,
        /// Testing aid: stop as Ctrl-C would after this many training steps.
        #[arg(long, hide = true)]
        stop_after_steps: Option<usize>,
    },
    /// Validate an experiment and print each layer's output shape, parameters and multiply-adds.
    Check {
        experiment: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Check these sweep axes too (as `run --sweep`).
        #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
        sweep: Vec<String>,
    },
    /// Write a submission for a test folder from a run's saved checkpoint.
    Predict {
        /// A run folder made by `ablate run`.
        run: PathBuf,
        /// Which checkpoint to use.
        #[arg(long, value_enum, default_value = "best")]
        checkpoint: Which,
        /// Folder of test images (or a dataset root holding the run's test folder).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output CSV (default: <run>/submission-<checkpoint>.csv); never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
        /// `auto`, `cpu`, `cuda` or `cuda:N`.
        #[arg(long)]
        device: Option<String>,
    },
    /// One table across runs and their variants, from each run's summary.csv.
    Compare {
        /// Run folders made by `ablate run`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Sort by this column, best first: best_val_acc, final_train_loss, images_per_sec,
        /// params, macs, seconds.
        #[arg(long)]
        sort: Option<String>,
    },
}
