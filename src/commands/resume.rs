//! `ablate resume`: finishes an interrupted run or sweep through the executor.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::device::DeviceChoice;
use crate::executor::{self, Attempt, Env, Refused, resume_hint};
use crate::output::log::RunLog;
use crate::output::report::SummaryTable;
use crate::output::run_folder::RunFolder;
use crate::output::summary::{self, Row, Status};
use crate::plan;
use crate::spec::Shard;
use crate::train::Interrupted;

/// A sharded run: row `i` also goes into the summary file of the shard that owns it, which
/// `ablate summarize` merges from (else a later summarize would bring back the old status).
fn record_in_shard_file(folder: &RunFolder, i: usize, row: &Row) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(folder.shards_dir()) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        let Some(shard) = path.file_name().and_then(|n| n.to_str()).and_then(Shard::from_summary_file) else {
            continue;
        };
        if shard.owns(i) {
            let mut rows = summary::read(&path)?;
            if let Some(r) = rows.get_mut(i) {
                *r = row.clone();
                summary::write_csv(&path, &rows)?;
            }
        }
    }
    Ok(())
}

/// Finishes the run at `run`. Variants that finished are kept, failed ones train again from
/// the start, an interrupted one continues from its checkpoint (model, optimizer, epoch and
/// batch, generator positions) and ends with the weights an uninterrupted run would have.
/// Each variant's own `config.toml` drives it; an edited one is refused, and so is a dataset
/// whose files changed unless `allow_data_change`.
pub fn resume(
    run: &Path,
    device: Option<DeviceChoice>,
    allow_data_change: bool,
    env: &mut Env,
) -> anyhow::Result<PathBuf> {
    let folder = RunFolder::open(run)?;
    let _lock = folder.lock()?;
    let mut table = SummaryTable::read(run, folder.title())?;
    folder.existing_variant(".").remove_temporaries()?;
    let log = RunLog::append(&folder.log(None), RunLog::terminal_bars())?;
    let (index, unfinished): (Vec<usize>, Vec<plan::Unfinished>) = (table.rows.iter().enumerate())
        .filter(|(_, r)| r.status != Status::Ok)
        .map(|(i, r)| {
            let config = folder.existing_variant(&r.variant).config();
            (i, plan::Unfinished { folder: r.variant.clone(), values: r.values.clone(), config })
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
            Attempt::Resume { allow_data_change }
        };
        let result = executor::open_device(&v.spec, device)
            .and_then(|device| executor::train(&v, &folder.variant(&v.folder)?, (&device.0, device.1), env, attempt));
        match result {
            Err(e) if e.is::<Interrupted>() => return Err(resume_hint(e, run)),
            Err(e) if e.is::<Refused>() => return Err(e),
            Ok(outcome) => table.rows[i] = Row::finished(&v.folder, &table.rows[i].values, v.size(), Ok(&outcome)),
            Err(e) => {
                log.info(format!("variant {} failed: {e:#}", v.folder));
                table.rows[i] = Row { status: Status::Failed, error: Some(format!("{e:#}")), ..table.rows[i].clone() };
            }
        }
        table.write(run)?;
        record_in_shard_file(&folder, i, &table.rows[i])?;
    }
    // Also when nothing was left to train: a kill may have stopped the last write of these.
    table.write(run)?;
    let failed = table.failed();
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
