//! The binary's command-line interface (a module of `main.rs`, not of the library): each flag
//! defined once with its doc, values parsed into types here at the edge (devices, shards,
//! overrides, sort keys, checkpoints), and the arguments of `ablate run` rendered back from the
//! parsed values for the Slurm script.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use ablate::{DeviceChoice, Override, Shard, SortKey, Which};

/// Deep-learning experiments on image folders, one TOML file per experiment.
#[derive(Debug, Parser)]
#[command(name = "ablate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Experiments with their overrides and sweep axes (`run`, `slurm`, `check`).
#[derive(Debug, Clone, clap::Args)]
pub struct Experiments {
    /// Experiment files (TOML), or folders of them (files starting with `_` skipped).
    /// Required (each command says so: `ablate slurm` takes `--resume` instead).
    pub experiments: Vec<PathBuf>,
    /// Override a config key: `--set optimizer.lr=3e-4` (values parse as TOML).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    pub set: Vec<Override>,
    /// Sweep a key over values: `--sweep model.params.groups=1,2,4` (adds to or replaces an
    /// axis of the file's [sweep]).
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    pub sweep: Vec<String>,
    /// Train every variant N times, with seeds seed, seed + 1, ... (replaces [sweep] repeats).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub repeats: Option<u64>,
}

impl Experiments {
    /// The same arguments as a command line would give them.
    pub fn to_args(&self) -> Vec<String> {
        let mut out: Vec<String> = self.experiments.iter().map(|p| p.display().to_string()).collect();
        out.extend(self.set.iter().flat_map(|o| ["--set".to_string(), format!("{}={}", o.key, o.raw)]));
        out.extend(self.sweep.iter().flat_map(|s| ["--sweep".to_string(), s.clone()]));
        out.extend(self.repeats.iter().flat_map(|n| ["--repeats".to_string(), n.to_string()]));
        out
    }
}

fn parse_override(s: &str) -> Result<Override, String> {
    Override::parse(s).map_err(|e| e.to_string())
}

/// `--device`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DeviceArg {
    /// `auto`, `cpu`, `cuda` or `cuda:N` (overrides train.device).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceChoice>,
}

/// `--runs-dir`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunsDir {
    /// Where run folders are created.
    #[arg(long = "runs-dir", default_value = "runs")]
    pub path: PathBuf,
}

/// Hidden testing aids.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Testing {
    /// Testing aid: stop as Ctrl-C would after this many training steps.
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the experiment(s) into a new folder under runs/ (several: one folder, one summary).
    #[command(mut_arg("experiments", |a| a.required(true)))]
    Run {
        #[command(flatten)]
        what: Experiments,
        #[command(flatten)]
        device: DeviceArg,
        #[command(flatten)]
        runs_dir: RunsDir,
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
        #[command(flatten)]
        testing: Testing,
    },
    /// Merge a sharded run's summaries (or redraw a run's) into summary.csv, .md and .png.
    Summarize {
        /// The run folder.
        run: PathBuf,
    },
    /// Print a bash script that submits the experiment(s) to Slurm: a job array with one
    /// variant per task, then a job that runs `ablate summarize`.
    #[command(mut_arg("experiments", |a| a.required_unless_present("resume")))]
    Slurm {
        #[command(flatten)]
        what: Experiments,
        /// Instead of experiments: resubmit this run folder's unfinished variants (pending or
        /// failed) as a job array that resumes them into the same folder.
        #[arg(long, value_name = "RUN", conflicts_with_all = ["experiments", "set", "sweep", "repeats"])]
        resume: Option<PathBuf>,
        #[command(flatten)]
        runs_dir: RunsDir,
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
        /// Seconds before the time limit at which Slurm sends SIGUSR1: each task then commits
        /// a checkpoint and stops, and is requeued to continue (default 300).
        #[arg(long, value_name = "SECONDS")]
        warn_before: Option<u32>,
    },
    /// Finish an interrupted run or sweep: finished variants are kept, failed ones train again,
    /// an interrupted one continues from its checkpoint.
    Resume {
        /// The run folder.
        run: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
        /// Continue although images were added, removed or changed since the run started (the
        /// validation split changes with them).
        #[arg(long)]
        allow_data_change: bool,
        /// Finish only the variants whose index is I modulo N, beside other processes finishing
        /// theirs (what `ablate slurm --resume` gives each task).
        #[arg(long, value_name = "I/N")]
        shard: Option<Shard>,
        #[command(flatten)]
        testing: Testing,
    },
    /// Validate experiments and print each layer's output shape, parameters and multiply-adds.
    #[command(mut_arg("experiments", |a| a.required(true)))]
    Check {
        #[command(flatten)]
        what: Experiments,
        /// Show each block's own nodes (inputs, shapes, parameters, multiply-adds) under it.
        #[arg(long)]
        nodes: bool,
        /// Also write the model graph as a Graphviz file (one per variant of a sweep).
        #[arg(long, value_name = "FILE.dot")]
        dot: Option<std::path::PathBuf>,
        /// Draw the --dot file as a PNG beside it (needs Graphviz's `dot`).
        #[arg(long, requires = "dot")]
        png: bool,
    },
    /// The learning-rate range test (fastai's lr_find): train with a rate growing each step
    /// until the loss diverges; write the loss against the rate (lr_find.csv, lr_find.png)
    /// and print the suggested rate.
    #[command(name = "lr-find", mut_arg("experiments", |a| a.required(true)))]
    LrFind {
        #[command(flatten)]
        what: Experiments,
        /// The first learning rate.
        #[arg(long, default_value_t = 1e-7)]
        start: f64,
        /// The last learning rate.
        #[arg(long, default_value_t = 10.0)]
        end: f64,
        /// The most steps (the test stops when the loss diverges).
        #[arg(long, default_value_t = 100)]
        steps: usize,
        /// Output folder (default: runs/<date>_<time>_lr-find).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceArg,
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
        /// Also write each class's probability (columns p_<class>), for ensembling.
        #[arg(long)]
        probs: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Score a run's saved checkpoint on a labelled folder (one sub-folder per class): confusion
    /// matrix, per-class precision, recall and F1, accuracy with its 95 % interval.
    Evaluate {
        /// A run folder made by `ablate run` (a variant's folder, in a sweep).
        run: PathBuf,
        /// The labelled folder: <DATA>/<class>/<images>, classes named as the run's.
        #[arg(long)]
        data: PathBuf,
        /// Which checkpoint to use.
        #[arg(long, value_enum, default_value = "best")]
        checkpoint: Which,
        /// Name of the report files, <run>/eval/<NAME>_*.csv (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// One table across runs and their variants, from each run's summary.csv.
    Compare {
        /// Run folders made by `ablate run`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Sort by this column, best first.
        #[arg(long, value_enum)]
        sort: Option<SortKey>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_arguments_render_back_to_what_parses_to_them() {
        let argv =
            ["ablate", "check", "a.toml", "dir", "--set", "optimizer.lr=3e-4", "--sweep", "seed=1,2", "--repeats", "3"];
        let Command::Check { what, .. } = Cli::parse_from(argv).command else { panic!("not check") };
        assert_eq!(what.to_args(), argv[2..]);
    }

    #[test]
    fn the_command_line_is_consistent_and_experiments_are_required() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for argv in [&["ablate", "run"][..], &["ablate", "check"], &["ablate", "slurm"]] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{argv:?}");
        }
        let cli = Cli::try_parse_from(["ablate", "slurm", "--resume", "runs/1_x"]).unwrap();
        assert!(matches!(cli.command, Command::Slurm { resume: Some(_), .. }));
        assert!(Cli::try_parse_from(["ablate", "slurm", "a.toml", "--resume", "runs/1_x"]).is_err());
    }

    #[test]
    fn devices_and_sort_keys_parse_at_the_edge() {
        let cli = Cli::try_parse_from(["ablate", "resume", "r", "--device", "cuda:1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Resume { device: DeviceArg { device: Some(DeviceChoice::Cuda(1)) }, .. }
        ));
        let err = Cli::try_parse_from(["ablate", "resume", "r", "--device", "tpu"]).unwrap_err().to_string();
        assert!(err.contains("unknown device \"tpu\""), "{err}");
        let cli = Cli::try_parse_from(["ablate", "compare", "r", "--sort", "images_per_sec"]).unwrap();
        assert!(matches!(cli.command, Command::Compare { sort: Some(SortKey::ImagesPerSec), .. }));
    }
}
