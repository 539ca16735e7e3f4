//! `ablate resume`: finishes an interrupted run or sweep through the executor.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::device::DeviceChoice;
use crate::executor::{self, Attempt, Env, Refused, resume_hint};
use crate::output::log::RunLog;
use crate::output::report::SummaryTable;
use crate::output::run_folder::RunFolder;
use crate::output::summary::{Row, Status};
use crate::plan;
use crate::spec::Shard;
use crate::train::Interrupted;

/// What `ablate resume` may do besides continuing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResumeOptions {
    pub device: Option<DeviceChoice>,
    /// Continue although the dataset's files changed since the run started.
    pub allow_data_change: bool,
    /// Finish only this shard's variants (`ablate slurm --resume` gives each array task one),
    /// beside other processes finishing theirs; default all, with the folder to itself.
    pub shard: Option<Shard>,
}

/// Finishes the run at `run`. Variants that finished are kept, failed ones train again from
/// the start, an interrupted one continues from its checkpoint (model, optimizer, epoch and
/// batch, generator positions) and ends with the weights an uninterrupted run would have.
/// Each variant's own `config.toml` drives it; an edited one is refused, and so is a dataset
/// whose files changed unless `allow_data_change`.
pub fn resume(run: &Path, opts: ResumeOptions, env: &mut Env) -> anyhow::Result<PathBuf> {
    let folder = RunFolder::open(run)?;
    let _locks = match opts.shard {
        Some(shard) => folder.lock_shard(shard)?.into(),
        None => vec![folder.lock()?],
    };
    let shard = opts.shard.unwrap_or(Shard { index: 0, count: 1 });
    let mut table = SummaryTable::collect(&folder)?;
    if opts.shard.is_none() {
        folder.existing_variant(".").remove_temporaries()?;
    }
    let log = RunLog::append(&folder.log(opts.shard), RunLog::terminal_bars())?;
    let (index, unfinished): (Vec<usize>, Vec<plan::Unfinished>) = (table.rows.iter().enumerate())
        .filter(|(i, r)| r.status != Status::Ok && shard.owns(*i))
        .map(|(i, r)| {
            let config = folder.existing_variant(&r.variant).config();
            let group = r.group().to_string();
            (
                i,
                plan::Unfinished {
                    folder: r.variant.clone(),
                    values: r.values.clone(),
                    repeat: r.repeat,
                    group,
                    config,
                },
            )
        })
        .unzip();
    let plans = plan::from_run(&unfinished)?;
    for (i, v) in index.into_iter().zip(plans) {
        // A failed variant trains again from the start; an interrupted one continues.
        let attempt = if table.rows[i].status == Status::Failed {
            log.info(format!("training {} again (it failed)", v.folder));
            Attempt::Retry
        } else {
            log.info(format!("resuming {}", v.folder));
            Attempt::Resume { allow_data_change: opts.allow_data_change }
        };
        let result = executor::open_device(&v.spec, opts.device)
            .and_then(|device| executor::train(&v, &folder.variant(&v.folder)?, (&device.0, device.1), env, attempt));
        let row = match result {
            Err(e) if e.is::<Interrupted>() => return Err(resume_hint(e, run)),
            Err(e) if e.is::<Refused>() => return Err(e),
            Ok(outcome) => Row::finished(&table.rows[i], Ok(&outcome)),
            Err(e) => {
                log.info(format!("variant {} failed: {e:#}", v.folder));
                Row { status: Status::Failed, error: Some(format!("{e:#}")), ..table.rows[i].clone() }
            }
        };
        table.record(&folder, i, row)?;
        SummaryTable::refresh(&folder)?;
    }
    // Also when nothing was left to train: a kill may have stopped the last write of these.
    let table = SummaryTable::refresh(&folder)?;
    let failed: Vec<&str> = table
        .rows
        .iter()
        .enumerate()
        .filter(|(i, r)| shard.owns(*i) && r.status == Status::Failed)
        .map(|(_, r)| r.variant.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} variants failed ({}); see {}",
            failed.len(),
            table.rows.len(),
            failed.join(", "),
            folder.summary_csv().display()
        );
    }
    Ok(run.to_path_buf())
}
