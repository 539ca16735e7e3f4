//! `ablate slurm`: the plan's variant count and folder name (or a run's unfinished
//! variants), as a submission script.

use std::path::Path;

use anyhow::bail;

use crate::output::report::SummaryTable;
use crate::output::run_folder::{self, RunFolder};
use crate::output::summary::Status;
use crate::plan::{self, Request};
use crate::scaleout::{self, SlurmOptions, Submission, Tasks};

/// A bash script that submits `request` as a Slurm job array (one variant per task, all into
/// one run folder under `runs_dir`) and a job that writes the run's summary. `run_args` are
/// the arguments each task passes to `ablate run` (experiments, overrides, sweep, runs folder).
pub fn slurm(request: &Request, run_args: &[String], runs_dir: &Path, opts: &SlurmOptions) -> anyhow::Result<String> {
    let plan = plan::plan(request)?;
    let name = run_folder::safe(&plan.title);
    let sub = Submission {
        ablate: &std::env::current_exe()?.display().to_string(),
        workdir: &std::env::current_dir()?.display().to_string(),
        runs_dir: &runs_dir.display().to_string(),
        name: &name,
        variants: plan.variants.len(),
        tasks: Tasks::Run { args: run_args, name: &name },
    };
    Ok(scaleout::script(&sub, opts))
}

/// A bash script that submits the unfinished (pending or failed) variants of the run at `run`
/// as a job array into the same folder, each task resuming its one variant, and then a job
/// that writes the summary. The jobs' output files go to the run's parent folder.
pub fn slurm_resume(run: &Path, opts: &SlurmOptions) -> anyhow::Result<String> {
    let folder = RunFolder::open(run)?;
    let table = SummaryTable::collect(&folder)?;
    let unfinished: Vec<usize> =
        table.rows.iter().enumerate().filter(|(_, r)| r.status != Status::Ok).map(|(i, _)| i).collect();
    if unfinished.is_empty() {
        bail!("{}: every variant finished; nothing to resubmit", run.display());
    }
    let run = std::path::absolute(run)?;
    let runs_dir = run.parent().unwrap_or(Path::new("."));
    let sub = Submission {
        ablate: &std::env::current_exe()?.display().to_string(),
        workdir: &std::env::current_dir()?.display().to_string(),
        runs_dir: &runs_dir.display().to_string(),
        name: &format!("{}-resume", folder.title()),
        variants: table.rows.len(),
        tasks: Tasks::Resume { run: &run.display().to_string(), unfinished: &unfinished },
    };
    Ok(scaleout::script(&sub, opts))
}
