//! `ablate run`: plan, then a run folder, then each of this shard's variants through the
//! executor, with the summary rewritten after each.

use std::path::PathBuf;

use anyhow::bail;

use crate::device::DeviceChoice;
use crate::executor::{self, Attempt, Env, resume_hint};
use crate::output::hparams;
use crate::output::log::RunLog;
use crate::output::report::SummaryTable;
use crate::output::run_folder::RunFolder;
use crate::output::summary::{Row, Status};
use crate::output::tensorboard::TensorBoardSink;
use crate::output::write_atomic;
use crate::plan::{self, Plan, Request, VariantPlan};
use crate::spec::Shard;
use crate::train::Interrupted;

/// Options of `ablate run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub request: Request,
    /// `--device`, overriding `train.device`.
    pub device: Option<DeviceChoice>,
    pub runs_dir: PathBuf,
    /// Stop at the first failing variant instead of marking it failed and going on.
    pub fail_fast: bool,
    /// Train only this shard's variants (see [`Shard`]); needs `run_id`.
    pub shard: Option<Shard>,
    /// A fixed run folder `<runs_dir>/<run_id>_<name>` that several processes (shards) share,
    /// instead of a fresh timestamped one.
    pub run_id: Option<String>,
    /// This shard ran before in the same folder (Slurm requeued it: `SLURM_RESTART_COUNT` > 0):
    /// its finished variants are kept and the others continue from their checkpoints.
    pub requeued: bool,
}

/// Runs the experiments into a new run folder and returns it. A run of one experiment without
/// a sweep puts its files straight into the folder; otherwise each variant trains into its own
/// sub-folder. Every variant is validated before the folder exists.
pub fn run(opts: &RunOptions, env: &mut Env) -> anyhow::Result<PathBuf> {
    let plan = plan::plan(&opts.request)?;
    plan.check_init()?;
    for v in &plan.variants {
        // A device that cannot be opened, or a precision it cannot do, fails here.
        executor::open_device(&v.spec, opts.device)?;
    }
    let shard = opts.shard.unwrap_or(Shard { index: 0, count: 1 });
    let run = match &opts.run_id {
        Some(id) => RunFolder::shared(&opts.runs_dir, &plan.title, id, shard, opts.requeued)?,
        None => RunFolder::create(&opts.runs_dir, &plan.title)?,
    };
    // Held until the run ends; the shards of one sweep share the folder, one process each.
    let _lock = if shard.count > 1 { run.lock_shard(shard)?.into() } else { vec![run.lock()?] };
    write_records(&run, &plan)?;
    if plan.is_single() && shard.count == 1 {
        return run_single(&run, &plan, opts, env);
    }
    run_variants(&run, &plan, opts, shard, env)?;
    Ok(run.path().to_path_buf())
}

/// A variant's summary row before it trains.
fn pending(v: &VariantPlan) -> Row {
    Row { baseline: v.baseline, ..Row::pending(&v.folder, &v.values_text(), v.repeat, v.size()) }
}

/// The run's `experiment.toml`(s), each variant's `config.toml` (a resume needs them for
/// variants that never started; every shard writes them all: the same text, so whichever
/// lands is right), and the HParams experiment.
fn write_records(run: &RunFolder, plan: &Plan) -> anyhow::Result<()> {
    let multi = plan.experiments.len() > 1;
    for e in &plan.experiments {
        let top = if multi { e.name.as_str() } else { "." };
        run.variant(top)?;
        let path = run.experiment_toml(top);
        if !path.exists() {
            write_atomic(&path, e.as_written.as_bytes())?;
        }
    }
    for v in &plan.variants {
        let config = run.variant(&v.folder)?.config();
        if !config.exists() {
            write_atomic(&config, v.spec.config_toml.as_bytes())?;
        }
    }
    Ok(())
}

/// One experiment, no sweep: the run folder is the variant's folder, and its error is the
/// run's.
fn run_single(run: &RunFolder, plan: &Plan, opts: &RunOptions, env: &mut Env) -> anyhow::Result<PathBuf> {
    let v = &plan.variants[0];
    // Slurm ran this task before (`--run-id`, requeued): it continues what it left.
    let before = opts.requeued && run.variants_csv().exists();
    let attempt = match before.then(|| SummaryTable::collect(run)).transpose()? {
        Some(before) if before.rows[0].status == Status::Ok => return Ok(run.path().to_path_buf()),
        Some(before) if before.rows[0].status == Status::Failed => Attempt::Retry,
        Some(_) => Attempt::Resume { allow_data_change: false },
        None => Attempt::Fresh,
    };
    let mut table = SummaryTable::new(run, vec![pending(v)]);
    table.write_list(run)?;
    table.write(run.path())?;
    let device = executor::open_device(&v.spec, opts.device)?;
    let result = executor::train(v, &run.variant(".")?, (&device.0, device.1), env, attempt);
    if !result.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
        let row = Row::finished(&table.rows[0], result.as_ref().map_err(|e| format!("{e:#}")));
        table.record(run, 0, row)?;
        table.write(run.path())?;
        crate::output::crash::point("finish: summary written");
    }
    result.map_err(|e| resume_hint(e, run.path()))?;
    Ok(run.path().to_path_buf())
}

/// The run's table: as planned (its list written once), or, for a task that continues, as the
/// folders say, which must list the planned variants.
fn table_of(run: &RunFolder, plan: &Plan, continuing: bool) -> anyhow::Result<SummaryTable> {
    let planned = SummaryTable::new(run, plan.variants.iter().map(pending).collect());
    planned.write_list(run)?;
    if !continuing {
        return Ok(planned);
    }
    let table = SummaryTable::collect(run)?;
    let listed: Vec<&str> = table.rows.iter().map(|r| r.variant.as_str()).collect();
    let names: Vec<&str> = plan.variants.iter().map(|v| v.folder.as_str()).collect();
    if listed != names {
        bail!(
            "{} lists the variants {listed:?}, the experiment now gives {names:?}: it changed since the run started; continue the run with `ablate resume {}`",
            run.variants_csv().display(),
            run.path().display()
        );
    }
    Ok(table)
}

/// A sweep or several experiments: this shard's variants in turn; a failure is recorded and
/// the next goes on (unless `--fail-fast`). Each variant's status goes into its own folder,
/// and the run's summary is rewritten from all of them after each.
fn run_variants(run: &RunFolder, plan: &Plan, opts: &RunOptions, shard: Shard, env: &mut Env) -> anyhow::Result<()> {
    let sharded = shard.count > 1;
    // A requeued task continues what it started (its log is there): the variants it finished
    // are kept, the others resume.
    let continuing = opts.requeued && run.log(Some(shard)).exists();
    let log = if continuing {
        RunLog::append(&run.log(Some(shard)), RunLog::terminal_bars())?
    } else {
        RunLog::create(&run.log(Some(shard)), RunLog::terminal_bars())?
    };
    let total = plan.variants.len();
    let owned = (0..total).filter(|&i| shard.owns(i)).count();
    if sharded {
        log.info(format!("shard {shard}: {owned} of {total} variants into {}", run.path().display()));
    } else {
        log.info(format!("{total} variants into {}", run.path().display()));
    }
    let mut table = table_of(run, plan, continuing)?;
    SummaryTable::refresh(run)?;
    // (A single variant at the folder's root records its own HParams session there.)
    if shard.index == 0 && !continuing && !plan.is_single() {
        // The HParams experiment: every hyper-parameter with the values it takes (one per run
        // folder: the first shard writes it).
        let sessions: Vec<&[(String, toml::Value)]> = plan.variants.iter().map(|v| v.hparams.as_slice()).collect();
        TensorBoardSink::create(run.path())
            .add_summary(hparams::experiment(&hparams::domains(&sessions), hparams::now_secs()));
    }
    let mut failed = Vec::new();
    for (i, v) in plan.variants.iter().enumerate().filter(|(i, _)| shard.owns(*i)) {
        let attempt = match (continuing, table.rows[i].status) {
            (true, Status::Ok) => continue,
            (true, Status::Pending) => Attempt::Resume { allow_data_change: false },
            (true, Status::Failed) => Attempt::Retry,
            (false, _) => Attempt::Fresh,
        };
        log.info(format!("variant {}/{total}: {}", i + 1, v.folder));
        let result = executor::open_device(&v.spec, opts.device)
            .and_then(|device| executor::train(v, &run.variant(&v.folder)?, (&device.0, device.1), env, attempt));
        if result.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
            return Err(resume_hint(result.unwrap_err(), run.path()));
        }
        let row = Row::finished(&pending(v), result.as_ref().map_err(|e| format!("{e:#}")));
        table.record(run, i, row)?;
        let summary = SummaryTable::refresh(run)?;
        if let Err(err) = result {
            log.info(format!("variant {} failed: {err:#}", v.folder));
            failed.push(v.folder.as_str());
            if opts.fail_fast {
                return Err(err.context(format!("variant {} failed (--fail-fast)", v.folder)));
            }
        }
        if !sharded && i + 1 == total {
            log.info(format!("summary:\n{}", summary.markdown()));
        }
    }
    if sharded {
        log.info(format!(
            "shard {shard} done; {} has every variant finished so far (`ablate summarize {}` once all shards have ended)",
            run.path().join("summary.md").display(),
            run.path().display()
        ));
    }
    if !failed.is_empty() {
        bail!(
            "{} of {owned} variants failed ({}); see {}",
            failed.len(),
            failed.join(", "),
            run.path().join("summary.md").display()
        );
    }
    Ok(())
}
