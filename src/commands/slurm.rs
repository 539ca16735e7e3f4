//! `ablate slurm`: the plan's variant count and folder name, as a submission script.

use std::path::Path;

use crate::output::run_folder;
use crate::plan::{self, Request};
use crate::scaleout::{self, SlurmOptions, Submission};

/// A bash script that submits `request` as a Slurm job array (one variant per task, all into
/// one run folder under `runs_dir`) and a job that merges their summaries. `run_args` are the
/// arguments each task passes to `ablate run` (experiments, overrides, sweep, runs folder).
pub fn slurm(request: &Request, run_args: &[String], runs_dir: &Path, opts: &SlurmOptions) -> anyhow::Result<String> {
    let plan = plan::plan(request)?;
    let sub = Submission {
        ablate: &std::env::current_exe()?.display().to_string(),
        workdir: &std::env::current_dir()?.display().to_string(),
        run_args,
        runs_dir: &runs_dir.display().to_string(),
        name: &run_folder::safe(&plan.title),
        variants: plan.variants.len(),
    };
    Ok(scaleout::script(&sub, opts))
}
