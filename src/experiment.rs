//! Orchestration of the commands: `run`, `check` and `predict`, from experiment files to a
//! finished run folder. Everything here calls down into config -> model -> data -> train ->
//! output; nothing below reaches back up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressDrawTarget};

use crate::config::load::{self, Sources};
use crate::config::resolve::resolved_toml;
use crate::config::schema::{CacheMode, Precision};
use crate::config::sweep::{Sweep, Variant, format_value};
use crate::config::{Override, Spec, resolve};
use crate::data::folder::{self, Item};
use crate::data::loader::{ImageCache, Loader};
use crate::device::{self, DeviceChoice};
use crate::model::{Model, weights};
use crate::output::hparams;
use crate::output::log::RunLog;
use crate::output::sink::{CsvSink, MetricSink};
use crate::output::summary::{self, Row as SummaryRow, Status};
use crate::output::tensorboard::TensorBoardSink;
use crate::output::{checkpoint, run_dir, submission, write_atomic};
use crate::scaleout::Shard;
use crate::train::{self, FitOutcome, Interrupted, Splits};

/// Options of `ablate run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Experiment files; several go into one run folder with one summary.
    pub files: Vec<PathBuf>,
    pub overrides: Vec<Override>,
    /// `--sweep key=v1,v2` axes, added to (or replacing) the file's `[sweep]`.
    pub sweep: Vec<String>,
    /// `--device`, overriding `train.device`.
    pub device: Option<String>,
    pub runs_dir: PathBuf,
    /// Stop at the first failing variant instead of marking it failed and going on.
    pub fail_fast: bool,
    /// Train only this shard's variants (see [`Shard`]); needs `run_id`.
    pub shard: Option<Shard>,
    /// A fixed run folder `<runs_dir>/<run_id>_<name>` that several processes (shards) share,
    /// instead of a fresh timestamped one.
    pub run_id: Option<String>,
}

/// An experiment loaded, validated and matched with its dataset, before anything is written.
pub struct Prepared {
    pub sources: Sources,
    pub spec: Spec,
    pub items: Arc<Vec<Item>>,
    pub test_items: Option<Arc<Vec<Item>>>,
}

/// Loads `file` with `overrides`, finds its classes and images, validates everything.
pub fn prepare(file: &Path, overrides: Vec<Override>) -> anyhow::Result<Prepared> {
    prepare_sources(Sources { files: load::extends_chain(file)?, overrides, env: true }, file)
}

/// [`prepare`] for sources already gathered (`file` names them in errors).
fn prepare_sources(sources: Sources, file: &Path) -> anyhow::Result<Prepared> {
    let exp = load::load(&sources)?;
    let root = Path::new(&exp.data.root);
    let train_dir = root.join(&exp.data.train_dir);
    let classes = folder::class_names(&train_dir, exp.data.classes.as_deref())?;
    let spec = resolve(exp, &file.display().to_string(), classes)?;
    let items = Arc::new(folder::labelled(&spec.train_dir(), &spec.class_names)?);
    let test_items = match spec.test_dir() {
        Some(dir) => Some(Arc::new(folder::unlabelled(&dir).context(
            "no test images: point data.test_dir at them, or set data.test_dir = \"\" to train without a submission",
        )?)),
        None => None,
    };
    Ok(Prepared { sources, spec, items, test_items })
}

/// Builds the spec's model on `device`, loads `model.init` weights and applies `model.freeze`;
/// returns the model and what the import did.
pub fn build_model(spec: &Spec, device: &candle_core::Device) -> anyhow::Result<(Model, Option<String>)> {
    let mut model = Model::build(&spec.layers, spec.input_hw, spec.seed, device)?;
    let mut report = None;
    if let Some(init) = &spec.raw.model.init {
        let path = Path::new(&init.weights);
        let what = || format!("model.init.weights = \"{}\"", init.weights);
        let file = weights::read(path).with_context(what)?;
        let r = weights::import(&model, &file, &init.skip, &init.weights).with_context(what)?;
        report = Some(format!("weights from {}: {r}", path.display()));
    }
    model.freeze(&spec.raw.model.freeze)?;
    if !spec.raw.model.freeze.is_empty() {
        let n: usize = model.trainable().iter().map(|(_, v)| v.elem_count()).sum();
        let note = format!("frozen: {} ({} parameters left to train)", spec.raw.model.freeze.join(", "), n);
        report = Some(report.map_or(note.clone(), |r| format!("{r}; {note}")));
    }
    Ok((model, report))
}

fn device_for(spec: &Spec, cli: Option<&str>) -> anyhow::Result<DeviceChoice> {
    let (value, key) = match cli {
        Some(d) => (d, "--device"),
        None => (spec.raw.train.device.as_str(), "train.device"),
    };
    value.parse().map_err(|e: String| anyhow::anyhow!("{key}: {e}"))
}

/// The experiment file(s) as the user wrote them: the file itself, then its bases and the
/// overrides as comments, so the record is complete and still valid TOML.
fn as_written(sources: &Sources) -> anyhow::Result<String> {
    let (file, bases) = sources.files.split_last().expect("the chain holds at least the file");
    let mut text = std::fs::read_to_string(file)?;
    for base in bases.iter().rev() {
        text.push_str(&format!("\n# ---- ablate: extends {} ----\n", base.display()));
        for line in std::fs::read_to_string(base)?.lines() {
            text.push_str(&format!("# {line}\n"));
        }
    }
    if !sources.overrides.is_empty() {
        text.push_str("\n# ---- ablate: command-line overrides ----\n");
        for o in &sources.overrides {
            text.push_str(&format!("# --set {}={}\n", o.key, o.raw));
        }
    }
    Ok(text)
}

fn progress() -> MultiProgress {
    // indicatif draws only on a terminal; elsewhere (CI, pipes) the bars stay hidden.
    MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
}

/// The experiment as loaded (with `overrides`) and its sweep's variants (none without a
/// sweep). A `model.params` key must exist to be swept: a misspelt one would change nothing.
fn sweep_variants(
    file: &Path,
    overrides: &[Override],
    cli_sweep: &[String],
) -> anyhow::Result<(crate::config::schema::Experiment, Vec<Variant>)> {
    let chain = load::extends_chain(file)?;
    let base = load::load(&Sources { files: chain, overrides: overrides.to_vec(), env: true })?;
    let file_name = file.display().to_string();
    let sweep = Sweep::from_table(&base.sweep, &file_name)?.with_cli(cli_sweep)?;
    for axis in &sweep.axes {
        if let Some(name) = axis.key.strip_prefix("model.params.")
            && !base.model.params.contains_key(name)
        {
            bail!(
                "{file_name}: sweep key `{}`: `{name}` is not in model.params (it has: {})",
                axis.key,
                base.model.params.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let variants = sweep.expand()?;
    Ok((base, variants))
}

/// Extra metric sinks per variant (tests pass memory sinks); called with the variant's name.
pub type SinkFactory<'a> = &'a mut dyn FnMut(&str) -> Vec<Box<dyn MetricSink>>;

/// Runs one experiment into a new run folder and returns the folder. Without a sweep the run's
/// files go straight into it; with one, every variant is validated first, then each trains
/// into its own sub-folder, and `summary.csv` / `summary.md` are rewritten after each.
pub fn run(opts: &RunOptions, sinks: SinkFactory) -> anyhow::Result<PathBuf> {
    let mut plans = Vec::with_capacity(opts.files.len());
    for file in &opts.files {
        let (base, variants) = sweep_variants(file, &opts.overrides, &opts.sweep)?;
        plans.push((file, base, variants));
    }
    if let [(file, _, variants)] = &plans[..]
        && variants.is_empty()
        && opts.run_id.is_none()
    {
        let p = prepare(file, opts.overrides.clone())?;
        let (device, notice) = device::open(device_for(&p.spec, opts.device.as_deref())?)?;
        let (model, import) = build_model(&p.spec, &device)?;
        apply_precision(&p.spec, &model, &device)?;
        // Everything is validated: only now does the run folder exist.
        let dir = create_run_dir(opts, &p.spec.name)?;
        write_atomic(&dir.join("experiment.toml"), as_written(&p.sources)?.as_bytes())?;
        let model_size = size(&model);
        let pending = summary_row(".", "", model_size, Err(String::new()));
        crate::output::report::write_summary(
            &dir,
            &p.spec.name,
            &[SummaryRow { status: Status::Pending, error: None, ..pending }],
        )?;
        let session = Session { hparams: hparams::standard(&p.spec.raw), group: p.spec.name.clone(), resume: false };
        let result = train_variant(&p, &dir, model, &device, [notice, import], &session, sinks("."));
        if !result.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
            let row = summary_row(".", "", model_size, result.as_ref().map_err(|e| format!("{e:#}")));
            crate::output::report::write_summary(&dir, &p.spec.name, &[row])?;
        }
        result.map_err(|e| resume_hint(e, &dir))?;
        return Ok(dir);
    }

    // Several experiments, or a sweep: validate every variant (config, data, shapes, weights)
    // before the first one trains.
    let multi = plans.len() > 1;
    let mut entries: Vec<Entry> = Vec::new();
    for (file, base, variants) in &plans {
        let points: Vec<(String, Vec<(String, toml::Value)>)> = if variants.is_empty() {
            vec![(String::new(), Vec::new())]
        } else {
            variants.iter().map(|v| (v.name.clone(), v.values.clone())).collect()
        };
        for (name, values) in points {
            let folder = match (multi, name.is_empty()) {
                (true, true) => base.name.clone(),
                (true, false) => format!("{}/{name}", base.name),
                (false, true) => ".".into(),
                (false, false) => name,
            };
            if entries.iter().any(|e| e.folder == folder) {
                bail!("two experiments would both write {folder}/: give them different `name`s");
            }
            let extra = values.iter().map(|(k, v)| Override { key: k.clone(), value: v.clone(), raw: format_value(v) });
            let overrides: Vec<Override> = opts.overrides.iter().cloned().chain(extra).collect();
            let what = || format!("{}: variant {folder}", file.display());
            let p = prepare(file, overrides).with_context(what)?;
            let (model, _) = build_model(&p.spec, &candle_core::Device::Cpu).with_context(what)?;
            let mut session = values.clone();
            if multi {
                session.insert(0, ("experiment".into(), toml::Value::String(base.name.clone())));
            }
            session.extend(
                hparams::standard(&p.spec.raw).into_iter().filter(|(k, _)| !values.iter().any(|(s, _)| s == k)),
            );
            entries.push(Entry { size: size(&model), folder, values, session, prepared: p });
        }
    }
    let title = plans.iter().map(|(_, b, _)| b.name.as_str()).collect::<Vec<_>>().join("+");
    let shard = opts.shard.unwrap_or(Shard { index: 0, count: 1 });
    let dir = match &opts.run_id {
        Some(id) => shared_run_dir(opts, &title, id, shard)?,
        None => create_run_dir(opts, &title)?,
    };
    if multi {
        for (_, base, _) in &plans {
            std::fs::create_dir_all(dir.join(&base.name))?;
        }
    }
    for e in &entries {
        // Each experiment's file as written, once, at the top of its folders.
        let top = if multi { dir.join(e.folder.split('/').next().unwrap_or_default()) } else { dir.clone() };
        if !top.join("experiment.toml").exists() {
            let mut written = as_written(&e.prepared.sources)?;
            written.push_str(&opts.sweep.iter().map(|s| format!("# --sweep {s}\n")).collect::<String>());
            write_atomic(&top.join("experiment.toml"), written.as_bytes())?;
        }
    }
    // Every variant's resolved config up front: `ablate resume` needs them for variants that
    // never started (every shard writes them all: the same text, so whichever lands is right).
    for e in &entries {
        let vdir = dir.join(&e.folder);
        std::fs::create_dir_all(&vdir)?; // inside this run's folder: nothing else's to overwrite
        if !vdir.join("config.toml").exists() {
            write_atomic(&vdir.join("config.toml"), resolved_toml(&e.prepared.spec)?.as_bytes())?;
        }
    }
    let sharded = shard.count > 1;
    let log_name = if sharded { format!("log.shard-{}-of-{}.txt", shard.index, shard.count) } else { "log.txt".into() };
    let log = RunLog::create(&dir.join(log_name), progress())?;
    let owned = (0..entries.len()).filter(|&i| shard.owns(i)).count();
    if sharded {
        log.info(format!("shard {shard}: {owned} of {} variants into {}", entries.len(), dir.display()));
    } else {
        log.info(format!("{} variants into {}", entries.len(), dir.display()));
    }
    let values =
        |e: &Entry| e.values.iter().map(|(k, x)| format!("{k}={}", format_value(x))).collect::<Vec<_>>().join(";");
    let mut rows: Vec<SummaryRow> = entries
        .iter()
        .map(|e| SummaryRow {
            status: Status::Pending,
            error: None,
            ..summary_row(&e.folder, &values(e), e.size, Err(String::new()))
        })
        .collect();
    // A shard writes its own summary (every row, its own filled in); `ablate summarize` merges.
    let write_summary = |rows: &[SummaryRow]| -> anyhow::Result<()> {
        if sharded {
            let shards = dir.join("shards");
            std::fs::create_dir_all(&shards)?;
            summary::write_csv(&shards.join(shard.summary_file()), rows)
        } else {
            crate::output::report::write_summary(&dir, &title, rows)
        }
    };
    write_summary(&rows)?;
    // The HParams experiment: every hyper-parameter with the values it takes (one per run
    // folder: the first shard writes it).
    let mut domains: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (k, x) in entries.iter().flat_map(|e| e.session.iter().cloned()) {
        match domains.iter_mut().find(|(name, _)| *name == k) {
            Some((_, vals)) if !vals.contains(&x) => vals.push(x),
            Some(_) => {}
            None => domains.push((k, vec![x])),
        }
    }
    if shard.index == 0 {
        TensorBoardSink::create(&dir).add_summary(hparams::experiment(&domains, hparams::now_secs()));
    }
    for (i, e) in entries.iter().enumerate() {
        if !shard.owns(i) {
            continue;
        }
        log.info(format!("variant {}/{}: {}", i + 1, entries.len(), e.folder));
        let vdir = dir.join(&e.folder);
        let p = &e.prepared;
        let result = device::open(device_for(&p.spec, opts.device.as_deref())?).and_then(|(device, notice)| {
            let (model, import) = build_model(&p.spec, &device)?;
            let session = Session { hparams: e.session.clone(), group: e.folder.clone(), resume: false };
            train_variant(p, &vdir, model, &device, [notice, import], &session, sinks(&e.folder))
        });
        if let Err(err) = result.as_ref()
            && err.is::<Interrupted>()
        {
            return Err(resume_hint(result.unwrap_err(), &dir));
        }
        rows[i] = summary_row(&e.folder, &values(e), e.size, result.as_ref().map_err(|e| format!("{e:#}")));
        write_summary(&rows)?;
        if let Err(err) = result {
            log.info(format!("variant {} failed: {err:#}", e.folder));
            if opts.fail_fast {
                return Err(err.context(format!("variant {} failed (--fail-fast)", e.folder)));
            }
        }
    }
    if sharded {
        log.info(format!(
            "shard {shard} done; once every shard is, merge their summaries with: ablate summarize {}",
            dir.display()
        ));
    } else {
        log.info(format!("summary:\n{}", summary::markdown(&title, &rows)));
    }
    let failed: Vec<&str> = rows.iter().filter(|r| r.status == Status::Failed).map(|r| r.variant.as_str()).collect();
    if !failed.is_empty() {
        bail!(
            "{} of {owned} variants failed ({}); see {}",
            failed.len(),
            failed.join(", "),
            dir.join(if sharded { "log.shard-*.txt" } else { "summary.md" }).display()
        );
    }
    Ok(dir)
}

/// The run folder title and number of variants `ablate run` would train for these files and
/// overrides (every variant validated as a sweep key; data and shapes are checked by `run`).
pub fn plan(files: &[PathBuf], overrides: &[Override], cli_sweep: &[String]) -> anyhow::Result<(String, usize)> {
    let mut names = Vec::new();
    let mut count = 0;
    for file in files {
        let (base, variants) = sweep_variants(file, overrides, cli_sweep)?;
        names.push(base.name);
        count += variants.len().max(1);
    }
    Ok((run_title(files.len(), &names.join("+")), count))
}

/// The experiment files named by `args`: files as given, folders walked for `*.toml` files
/// (sorted; names starting with `_`, such as shared bases, skipped).
pub fn experiment_files(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for arg in args {
        if !arg.is_dir() {
            files.push(arg.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = walkdir::WalkDir::new(arg)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('_')))
            .collect();
        if found.is_empty() {
            bail!("no experiment files (*.toml) in {}", arg.display());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Adds how to go on to an interruption.
fn resume_hint(e: anyhow::Error, run: &Path) -> anyhow::Error {
    if e.is::<Interrupted>() {
        e.context(format!("stopped; continue with: ablate resume {}", run.display()))
    } else {
        e
    }
}

/// `ablate resume`: finishes an interrupted run or sweep. Variants that finished are kept,
/// failed ones train again from the start, an interrupted one continues from its checkpoint
/// (model, optimizer, epoch and batch, generator positions) and ends with the weights an
/// uninterrupted run would have. Each variant's own `config.toml` drives it; an edited one is
/// refused.
pub fn resume(run: &Path, device: Option<&str>, sinks: SinkFactory) -> anyhow::Result<PathBuf> {
    let path = run.join("summary.csv");
    let mut rows =
        summary::read(&path).with_context(|| format!("{}: not a run folder made by ablate run", run.display()))?;
    let title = run.file_name().map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
    let log = RunLog::append(&run.join("log.txt"), progress())?;
    for i in 0..rows.len() {
        if rows[i].status == Status::Ok {
            continue;
        }
        let variant = rows[i].variant.clone();
        let vdir = if variant == "." { run.to_path_buf() } else { run.join(&variant) };
        let config = vdir.join("config.toml");
        if !config.is_file() {
            bail!("{}: no config.toml, cannot resume variant {variant}", vdir.display());
        }
        log.info(format!("resuming {variant}"));
        let p = prepare_sources(Sources { files: vec![config.clone()], overrides: vec![], env: false }, &config)?;
        let mut hp: Vec<(String, toml::Value)> = rows[i]
            .values
            .split(';')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| Override::parse(kv).ok())
            .map(|o| (o.key, o.value))
            .collect();
        let standard: Vec<_> =
            hparams::standard(&p.spec.raw).into_iter().filter(|(k, _)| !hp.iter().any(|(s, _)| s == k)).collect();
        hp.extend(standard);
        let result = device::open(device_for(&p.spec, device)?).and_then(|(dev, notice)| {
            let (model, import) = build_model(&p.spec, &dev)?;
            let session = Session {
                hparams: hp,
                group: if variant == "." { p.spec.name.clone() } else { variant.clone() },
                resume: true,
            };
            let size = size(&model);
            train_variant(&p, &vdir, model, &dev, [notice, import], &session, sinks(&variant)).map(|o| (o, size))
        });
        match result {
            Err(e) if e.is::<Interrupted>() => return Err(resume_hint(e, run)),
            Ok((outcome, size)) => rows[i] = summary_row(&variant, &rows[i].values.clone(), size, Ok(&outcome)),
            Err(e) => {
                log.info(format!("variant {variant} failed: {e:#}"));
                rows[i] = SummaryRow { status: Status::Failed, error: Some(format!("{e:#}")), ..rows[i].clone() };
            }
        }
        crate::output::report::write_summary(run, &title, &rows)?;
    }
    let failed: Vec<&str> = rows.iter().filter(|r| r.status == Status::Failed).map(|r| r.variant.as_str()).collect();
    if !failed.is_empty() {
        bail!("{} of {} variants failed ({}); see {}", failed.len(), rows.len(), failed.join(", "), path.display());
    }
    Ok(run.to_path_buf())
}

/// One training of a multi-variant run, validated before any trains.
struct Entry {
    /// Sub-folder: `groups=8`, or `<experiment>[/<variant>]` when several files run together.
    folder: String,
    /// The swept values.
    values: Vec<(String, toml::Value)>,
    /// HParams session values: the swept ones, then the standard ones.
    session: Vec<(String, toml::Value)>,
    prepared: Prepared,
    size: (usize, u64),
}

/// The name part of a run folder for experiments titled `title`.
pub fn run_title(files: usize, title: &str) -> String {
    // A long list of experiment names would make an unwieldy folder name.
    if title.len() > 60 { format!("{files}-experiments") } else { title.to_string() }
}

fn create_run_dir(opts: &RunOptions, title: &str) -> anyhow::Result<PathBuf> {
    run_dir::create(&opts.runs_dir, &run_title(opts.files.len(), title), chrono::Local::now())
        .with_context(|| format!("cannot create a run folder under {}", opts.runs_dir.display()))
}

/// `<runs_dir>/<id>_<title>`, shared by the shards of one sweep. A shard (or unsharded run)
/// that already ran there is refused: a run id is used once.
fn shared_run_dir(opts: &RunOptions, title: &str, id: &str, shard: Shard) -> anyhow::Result<PathBuf> {
    let dir = opts.runs_dir.join(run_dir::shared_name(id, &run_title(opts.files.len(), title)));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the run folder {}", dir.display()))?;
    let mine = if shard.count > 1 { dir.join("shards").join(shard.summary_file()) } else { dir.join("summary.csv") };
    for done in [&mine, &dir.join("summary.csv")] {
        if done.exists() {
            bail!(
                "{} exists: run id {id} was used before (shard {shard}); pick another --run-id, or continue it with `ablate resume {}`",
                done.display(),
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// `ablate summarize`: merges a sharded run's shard summaries (`shards/summary-I-of-N.csv`,
/// row `i` taken from shard `i mod N`) into `summary.csv`, `summary.md` and `summary.png`, or
/// redraws them from an unsharded run's `summary.csv`. Returns the markdown table and a note
/// per shard that has not written its summary (its variants stay `pending`).
pub fn summarize(run: &Path) -> anyhow::Result<(String, Vec<String>)> {
    let title = run.file_name().map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
    let shards_dir = run.join("shards");
    let mut notes = Vec::new();
    let rows = if shards_dir.is_dir() {
        let mut found: Vec<(Shard, Vec<SummaryRow>)> = Vec::new();
        for entry in std::fs::read_dir(&shards_dir)? {
            let path = entry?.path();
            let Some(shard) = path.file_name().and_then(|n| n.to_str()).and_then(Shard::from_summary_file) else {
                continue;
            };
            let rows = summary::read(&path).with_context(|| format!("reading {}", path.display()))?;
            found.push((shard, rows));
        }
        let Some(count) = found.first().map(|(s, _)| s.count) else {
            bail!("{}: no shard summaries (summary-I-of-N.csv) yet", shards_dir.display());
        };
        if let Some((s, _)) = found.iter().find(|(s, _)| s.count != count) {
            bail!("{}: shard summaries of different shard counts ({count} and {})", shards_dir.display(), s.count);
        }
        let mut rows = found[0].1.clone();
        if let Some((s, r)) = found.iter().find(|(_, r)| r.len() != rows.len()) {
            bail!("{}: shard {s} lists {} variants, another {}", shards_dir.display(), r.len(), rows.len());
        }
        for index in 0..count {
            match found.iter().find(|(s, _)| s.index == index) {
                Some((s, theirs)) => {
                    for (i, row) in rows.iter_mut().enumerate().filter(|(i, _)| s.owns(*i)) {
                        *row = theirs[i].clone();
                    }
                }
                None => notes.push(format!("shard {index}/{count} has not written its summary yet")),
            }
        }
        rows
    } else {
        let path = run.join("summary.csv");
        summary::read(&path).with_context(|| format!("{}: not a run folder made by ablate run", run.display()))?
    };
    let unfinished = rows.iter().filter(|r| r.status == Status::Pending).count();
    if unfinished > 0 {
        notes.push(format!("{unfinished} of {} variants not finished (pending)", rows.len()));
    }
    crate::output::report::write_summary(run, &title, &rows)?;
    Ok((summary::markdown(&title, &rows), notes))
}

/// A model's size: total parameters and multiply-adds per image.
fn size(model: &Model) -> (usize, u64) {
    (model.summary().total_params(), model.summary().total_macs())
}

fn summary_row(
    variant: &str,
    values: &str,
    (params, macs): (usize, u64),
    result: Result<&FitOutcome, String>,
) -> SummaryRow {
    let (status, error, epochs) = match result {
        Ok(o) => (Status::Ok, None, o.epochs.as_slice()),
        Err(e) => (Status::Failed, Some(e), &[][..]),
    };
    let last = epochs.last();
    SummaryRow {
        variant: variant.into(),
        values: values.into(),
        params,
        macs,
        best_val_acc: epochs.iter().filter_map(|e| e.val_acc).reduce(f64::max),
        final_train_loss: last.map(|e| e.train_loss),
        images_per_sec: last.map(|e| e.images_per_sec),
        seconds: (!epochs.is_empty()).then(|| epochs.iter().map(|e| e.seconds).sum()),
        status,
        error,
    }
}

/// One attempt at training a variant: its HParams session (values, group) and whether it
/// continues an earlier, interrupted attempt.
struct Session {
    hparams: Vec<(String, toml::Value)>,
    group: String,
    resume: bool,
}

/// Trains one prepared experiment into `dir`: resolved config, log, metrics, event file,
/// checkpoints and submission.
fn train_variant(
    p: &Prepared,
    dir: &Path,
    model: Model,
    device: &candle_core::Device,
    notes: [Option<String>; 2],
    session: &Session,
    extra_sinks: Vec<Box<dyn MetricSink>>,
) -> anyhow::Result<FitOutcome> {
    let spec = &p.spec;
    apply_precision(spec, &model, device)?;
    write_atomic(&dir.join("config.toml"), resolved_toml(spec)?.as_bytes())?;
    let ckpt_dir = dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir)?;
    let log = if session.resume {
        RunLog::append(&dir.join("log.txt"), progress())?
    } else {
        RunLog::create(&dir.join("log.txt"), progress())?
    };
    log.info(format!("run folder: {}", dir.display()));
    let [notice, import] = notes;
    if let Some(n) = notice {
        log.info(n);
    }
    log.info(format!("model ({}x{} input):\n{}", spec.input_hw.0, spec.input_hw.1, model.summary()));
    if let Some(r) = import {
        log.info(r);
    }
    let result = train_logged(p, dir, &model, device, &log, session, extra_sinks);
    if let Err(e) = &result {
        log.info(format!("error: {e:#}"));
    }
    result
}

/// `train.precision`: bf16 autocast where it pays (CUDA); refused on the CPU, where candle
/// has no fast bf16 kernels and ablate's own ops are f32.
fn apply_precision(spec: &Spec, model: &Model, device: &candle_core::Device) -> anyhow::Result<()> {
    match spec.raw.train.precision {
        Precision::F32 => model.set_bf16(false),
        Precision::Bf16 if device.is_cpu() => bail!(
            "train.precision = \"bf16\" needs a CUDA device, but this run trains on the CPU (bf16 would be slower there, not faster): use precision = \"f32\", or a CUDA build and GPU (see the README)"
        ),
        Precision::Bf16 => model.set_bf16(true),
    }
    Ok(())
}

fn train_logged(
    p: &Prepared,
    dir: &Path,
    model: &Model,
    device: &candle_core::Device,
    log: &RunLog,
    session: &Session,
    extra_sinks: Vec<Box<dyn MetricSink>>,
) -> anyhow::Result<FitOutcome> {
    let spec = &p.spec;
    let d = &spec.raw.data;
    let ckpt_dir = &dir.join("checkpoints");
    let (train_idx, val_idx) = folder::split(&p.items, d.val_fraction, spec.seed);
    log.info(format!(
        "data: {} ({} classes: {}), {} train / {} validation images{}",
        spec.data_root.display(),
        spec.num_classes(),
        spec.class_names.join(", "),
        train_idx.len(),
        val_idx.len(),
        p.test_items.as_ref().map_or(String::new(), |t| format!(", {} test images", t.len()))
    ));
    let loader = |items: Arc<Vec<Item>>, transforms| {
        let mut l = Loader::new(items, transforms, spec.input_hw, d.batch_size);
        l.prefetch = d.prefetch;
        l.skip_bad = d.skip_bad;
        l.seed = spec.seed;
        l
    };
    let (mut train, mut val) =
        (loader(p.items.clone(), spec.train_transforms.clone()), loader(p.items.clone(), spec.eval_transforms.clone()));
    let cache = |pipeline: &[crate::data::transforms::Transform]| -> anyhow::Result<Arc<ImageCache>> {
        Ok(Arc::new(match d.cache {
            CacheMode::Disk => ImageCache::on_disk(p.items.len(), pipeline, &dir.join("cache"))
                .with_context(|| format!("cannot create the image cache under {}", dir.join("cache").display()))?,
            _ => ImageCache::new(p.items.len(), pipeline),
        }))
    };
    if d.cache != CacheMode::None {
        let train_cache = cache(&spec.train_transforms)?;
        let val_cache =
            if train_cache.fits(&spec.eval_transforms) { train_cache.clone() } else { cache(&spec.eval_transforms)? };
        (train, val) = (train.with_cache(train_cache), val.with_cache(val_cache));
    }
    let splits = Splits { train, train_idx, val, val_idx };
    let config_text = resolved_toml(spec)?;
    let previous = if session.resume { train::load_state(ckpt_dir)? } else { None };
    let (csv, resume) = match previous {
        Some(state) => {
            let history = CsvSink::read(&dir.join("metrics.csv"))?;
            (CsvSink::append(&dir.join("metrics.csv"))?, Some((state, history)))
        }
        None => (CsvSink::create(&dir.join("metrics.csv"))?, None),
    };
    let mut sinks: Vec<Box<dyn MetricSink>> =
        vec![Box::new(csv), Box::new(TensorBoardSink::with_session(dir, &session.hparams, &session.group))];
    sinks.extend(extra_sinks);

    let outcome =
        train::fit(spec, model, &splits, device, &mut sinks, ckpt_dir, log, resume, &train::fingerprint(&config_text));
    // An interrupted session is not over: its resume finishes it.
    if !outcome.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
        for sink in &mut sinks {
            sink.finish(outcome.is_ok())?;
        }
    }
    drop(sinks); // closes the event file
    let outcome = outcome?;

    if let Some(test) = &p.test_items {
        checkpoint::load(model, &ckpt_dir.join("best.safetensors"))?;
        let rows = predictions(model, &loader(test.clone(), spec.eval_transforms.clone()), device, log)?;
        submission::write(&dir.join("submission.csv"), &rows, &spec.class_names, &spec.raw.submission)?;
        log.info(format!(
            "submission.csv: {} test images, predicted with best.safetensors (epoch {})",
            rows.len(),
            outcome.best_epoch
        ));
    }
    let last = outcome.epochs.last().expect("at least one epoch");
    log.info(format!(
        "done: best epoch {}, final val acc {}, final train loss {:.4}",
        outcome.best_epoch,
        last.val_acc.map_or("-".into(), |v| format!("{v:.4}")),
        last.train_loss
    ));
    Ok(outcome)
}

fn predictions(
    model: &Model,
    loader: &Loader,
    device: &candle_core::Device,
    log: &RunLog,
) -> anyhow::Result<Vec<(String, usize)>> {
    let preds = train::predict(model, loader, device, log)?;
    Ok(preds.into_iter().map(|(i, c)| (loader.items()[i].id.clone(), c)).collect())
}

/// `ablate check`: each variant's validated per-layer summary (one table without a sweep),
/// without training; then the `model.init` weights checked against the model (the second
/// result, so the summaries show either way).
pub fn check(
    file: &Path,
    overrides: Vec<Override>,
    cli_sweep: &[String],
) -> anyhow::Result<(String, anyhow::Result<Option<String>>)> {
    let (_, variants) = sweep_variants(file, &overrides, cli_sweep)?;
    let runs: Vec<(String, Vec<Override>)> = if variants.is_empty() {
        vec![(String::new(), overrides)]
    } else {
        variants
            .iter()
            .map(|v| (format!("variant {}: ", v.name), overrides.iter().cloned().chain(v.overrides()).collect()))
            .collect()
    };
    let mut text = Vec::new();
    let mut weights = Ok(None);
    for (label, overrides) in runs {
        let p = prepare(file, overrides).with_context(|| label.trim_end_matches(": ").to_string())?;
        let spec = &p.spec;
        let model = Model::build(&spec.layers, spec.input_hw, spec.seed, &candle_core::Device::Cpu)?;
        text.push(format!(
            "{label}{}: {} classes ({}), {} labelled images, input 3x{}x{}\n{}",
            file.display(),
            spec.num_classes(),
            spec.class_names.join(", "),
            p.items.len(),
            spec.input_hw.0,
            spec.input_hw.1,
            model.summary()
        ));
        // Only a model with weights to load or layers to freeze has more to check; the first
        // problem found is the one reported.
        let extra = spec.raw.model.init.is_some() || !spec.raw.model.freeze.is_empty();
        if extra && weights.is_ok() {
            weights = build_model(spec, &candle_core::Device::Cpu).map(|(_, report)| report);
        }
    }
    Ok((text.join("\n\n"), weights))
}

/// Which saved weights `predict` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Best,
    Last,
}

/// `ablate predict`: a submission from a run's checkpoint and its own resolved config.
/// `data` is a folder of test images, or a dataset root holding the config's test folder.
pub fn predict(
    run: &Path,
    which: Which,
    data: Option<&Path>,
    out: Option<&Path>,
    device: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let config = run.join("config.toml");
    if !config.is_file() {
        bail!("{} has no config.toml: expected a run folder made by `ablate run`", run.display());
    }
    let sources = Sources { files: vec![config.clone()], overrides: vec![], env: false };
    let exp = load::load(&sources)?;
    let classes = exp.data.classes.clone().context("config.toml lists no data.classes")?;
    let spec = resolve(exp, &config.display().to_string(), classes)?;
    let test_dir = match data {
        Some(d) if d.join(&spec.raw.data.test_dir).is_dir() && !spec.raw.data.test_dir.is_empty() => {
            d.join(&spec.raw.data.test_dir)
        }
        Some(d) => d.to_path_buf(),
        None => spec.test_dir().context("the run has no data.test_dir: pass --data DIR")?,
    };
    let items = Arc::new(folder::unlabelled(&test_dir)?);
    let (device, _) = device::open(device_for(&spec, device)?)?;
    let model = Model::build(&spec.layers, spec.input_hw, spec.seed, &device)?;
    let name = match which {
        Which::Best => "best",
        Which::Last => "last",
    };
    checkpoint::load(&model, &run.join("checkpoints").join(format!("{name}.safetensors")))?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| run.join(format!("submission-{name}.csv")));
    let log = RunLog::terminal(progress());
    let mut loader = Loader::new(items, spec.eval_transforms.clone(), spec.input_hw, spec.raw.data.batch_size);
    loader.skip_bad = spec.raw.data.skip_bad;
    let rows = predictions(&model, &loader, &device, &log)?;
    submission::write(&out, &rows, &spec.class_names, &spec.raw.submission)?;
    Ok(out)
}

/// `ablate compare`: every run's summary rows in one markdown table, optionally sorted by a
/// column (accuracy, speed: highest first; loss, size, time: lowest first).
pub fn compare(runs: &[PathBuf], sort: Option<&str>) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for run in runs {
        let path = run.join("summary.csv");
        let name = run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned());
        let summary = summary::read(&path).with_context(|| format!("{} has no readable summary.csv", run.display()))?;
        rows.extend(summary.into_iter().map(|mut r| {
            r.variant = if r.variant == "." { name.clone() } else { format!("{name}/{}", r.variant) };
            r
        }));
    }
    if let Some(key) = sort {
        let value = |r: &SummaryRow| -> Option<f64> {
            match key {
                "best_val_acc" => r.best_val_acc,
                "images_per_sec" => r.images_per_sec,
                "final_train_loss" => r.final_train_loss.map(|v| -v),
                "seconds" => r.seconds.map(|v| -v),
                "params" => Some(-(r.params as f64)),
                "macs" => Some(-(r.macs as f64)),
                _ => None,
            }
        };
        if !["best_val_acc", "images_per_sec", "final_train_loss", "seconds", "params", "macs"].contains(&key) {
            bail!("--sort {key}: expected best_val_acc, final_train_loss, images_per_sec, params, macs or seconds");
        }
        // Missing values (failed variants) last.
        rows.sort_by(|a, b| value(b).unwrap_or(f64::NEG_INFINITY).total_cmp(&value(a).unwrap_or(f64::NEG_INFINITY)));
    }
    Ok(summary::markdown("comparison", &rows))
}
