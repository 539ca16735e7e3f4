//! The plan: experiment files x sweep x shard -> validated variant plans, before anything is
//! written. A pure step apart from reading the files it is given (experiments, bases, the
//! dataset's file list, `model.init` weights): each variant's config is resolved, its data
//! found, its model built once on the CPU to check shapes, freeze prefixes and weights, and
//! each weights file read once for every variant that uses it. `ablate check` is this plus
//! printing; `run`, `resume`, shards and Slurm tasks train what it returns.
//!
//! The only module besides `config` itself that imports `config`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};

pub use crate::config::Override;
use crate::config::load::{self, Sources};
use crate::config::resolve;
use crate::config::sweep::{Sweep, Variant, format_value};
use crate::data::DataError;
use crate::data::folder::{self, Item};
use crate::model::{Model, Summary, weights};
use crate::spec::Spec;

/// What to plan: `ablate run`'s (or `check`'s, or `slurm`'s) experiments and overrides.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Experiment files; several go into one run folder with one summary.
    pub files: Vec<PathBuf>,
    pub overrides: Vec<Override>,
    /// `--sweep key=v1,v2` axes, added to (or replacing) each file's `[sweep]`.
    pub sweep: Vec<String>,
    /// `--repeats N`: replaces each file's `[sweep] repeats`.
    pub repeats: Option<usize>,
}

/// Named tensors of a `model.init` weights file, read once and shared by its variants.
pub type Weights = Arc<HashMap<String, Tensor>>;

/// One experiment file of a plan.
pub struct ExperimentPlan {
    /// The experiment's `name`.
    pub name: String,
    /// The file as written, its bases and the command line's overrides and sweep as comments
    /// (the run's `experiment.toml`).
    pub as_written: String,
}

/// One training: a variant of an experiment, validated.
pub struct VariantPlan {
    /// Its folder in the run: `.` (a run of one), `groups=8`, or `<experiment>[/<variant>]`
    /// when several experiments run together; `.../r<k>` (or `r<k>`) for repeat `k`.
    pub folder: String,
    /// Which repeat of its variant this is, when the variant trains several times.
    pub repeat: Option<usize>,
    /// A run of the sweep's baseline variant (`[sweep] baseline`).
    pub baseline: bool,
    /// The swept values.
    pub values: Vec<(String, toml::Value)>,
    /// HParams session values: the swept ones (after `experiment` when several run), then the
    /// spec's standard ones.
    pub hparams: Vec<(String, toml::Value)>,
    /// The HParams group: the variant's folder (without `/r<k>`: repeats are one group), or
    /// the experiment's name for a run of one.
    pub group: String,
    pub spec: Spec,
    /// Labelled images.
    pub items: Arc<Vec<Item>>,
    /// Unlabelled test images, when the experiment makes a submission.
    pub test_items: Option<Arc<Vec<Item>>>,
    /// `model.init`'s tensors.
    pub weights: Option<Weights>,
    /// Per-layer shapes, parameters and multiply-adds.
    pub summary: Summary,
    /// What the weight import and freezing did (for the log), or why they cannot be done.
    pub init: Result<Option<String>, String>,
}

impl VariantPlan {
    /// `key=value` per swept key, `;`-separated (the summary's `values` column).
    pub fn values_text(&self) -> String {
        self.values.iter().map(|(k, x)| format!("{k}={}", format_value(x))).collect::<Vec<_>>().join(";")
    }

    /// Total parameters and multiply-adds per image.
    pub fn size(&self) -> (usize, u64) {
        (self.summary.total_params(), self.summary.total_macs())
    }
}

/// Every variant to train, in the documented sweep order, each experiment's after the
/// previous one's.
pub struct Plan {
    /// The run folder's title: the experiment names joined by `+` (shortened when long).
    pub title: String,
    pub experiments: Vec<ExperimentPlan>,
    pub variants: Vec<VariantPlan>,
}

impl Plan {
    /// A run of one experiment without a sweep: its files go straight into the run folder.
    pub fn is_single(&self) -> bool {
        matches!(&self.variants[..], [v] if v.folder == ".")
    }

    /// The first variant whose weights cannot be imported or frozen as asked, as an error.
    pub fn check_init(&self) -> anyhow::Result<()> {
        match self.variants.iter().find_map(|v| v.init.as_ref().err().map(|e| (v, e))) {
            Some((v, e)) if v.folder == "." => bail!("{e}"),
            Some((v, e)) => bail!("variant {}: {e}", v.folder),
            None => Ok(()),
        }
    }
}

/// `e` with the experiment file and the variant named once: a config error names its file
/// already; a run without a sweep has no variant name to give.
fn name_once(e: anyhow::Error, file: &Path, folder: &str) -> anyhow::Error {
    let file = file.display().to_string();
    match (folder == ".", format!("{e:#}").contains(&file)) {
        (true, true) => e,
        (true, false) => e.context(file),
        (false, true) => e.context(format!("variant {folder}")),
        (false, false) => e.context(format!("{file}: variant {folder}")),
    }
}

/// Plans `request`: every variant validated (config, data, shapes, weights), nothing written.
pub fn plan(request: &Request) -> anyhow::Result<Plan> {
    let multi = request.files.len() > 1;
    let mut experiments = Vec::new();
    let mut variants: Vec<VariantPlan> = Vec::new();
    let mut weights = WeightsCache::default();
    for file in &request.files {
        let sweep = sweep_points(file, request)?;
        let index = experiments.len();
        for point in &sweep.points {
            for repeat in (0..sweep.repeats).map(|r| (sweep.repeats > 1).then_some(r)) {
                let group = folder_name(multi, &sweep.name, &point.name);
                let folder = match repeat {
                    None => group.clone(),
                    Some(r) if group == "." => format!("r{r}"),
                    Some(r) => format!("{group}/r{r}"),
                };
                if variants.iter().any(|v| v.folder == folder) {
                    bail!("two experiments would both write {folder}/: give them different `name`s");
                }
                let chain = load::extends_chain(file)?;
                let mut overrides: Vec<Override> = request.overrides.iter().cloned().chain(point.overrides()).collect();
                if let Some(r) = repeat {
                    overrides.extend(repeat_overrides(&chain, &overrides, r, sweep.folds)?);
                }
                let sources = Sources { files: chain, overrides, env: true };
                let mut v = variant(&sources, file, &mut weights).map_err(|e| name_once(e, file, &folder))?;
                if experiments.len() == index {
                    // The user's own overrides and sweep axes, not this variant's values.
                    let user = Sources { overrides: request.overrides.clone(), ..sources };
                    let mut args: String = request.sweep.iter().map(|s| format!("# --sweep {s}\n")).collect();
                    args.extend(request.repeats.map(|n| format!("# --repeats {n}\n")));
                    experiments
                        .push(ExperimentPlan { name: sweep.name.clone(), as_written: as_written(&user)? + &args });
                }
                let mut session_values = point.values.clone();
                session_values.extend(repeat.map(|r| ("repeat".to_string(), toml::Value::Integer(r as i64))));
                v.hparams = session(&session_values, &v.spec, multi.then_some(sweep.name.as_str()));
                // Repeats of a variant share its HParams group, so TensorBoard shows them together.
                v.group = if group == "." { v.spec.name.clone() } else { group };
                v.baseline = sweep.baseline.as_deref() == Some(point.name.as_str());
                (v.folder, v.values, v.repeat) = (folder, point.values.clone(), repeat);
                variants.push(v);
            }
        }
    }
    let names: Vec<&str> = experiments.iter().map(|e| e.name.as_str()).collect();
    Ok(Plan { title: run_title(request.files.len(), &names.join("+")), experiments, variants })
}

/// A variant of an existing run to train again or continue: its folder, its swept values as
/// the summary's `values` column holds them (`key=value;...`), and its own `config.toml`.
pub struct Unfinished {
    pub folder: String,
    pub values: String,
    pub repeat: Option<usize>,
    /// The variant's folder without `/r<k>` (see `Row::group`).
    pub group: String,
    pub config: PathBuf,
}

/// The plans of an existing run's unfinished variants, each from its own `config.toml` (what
/// `ablate resume` trains).
pub fn from_run(unfinished: &[Unfinished]) -> anyhow::Result<Vec<VariantPlan>> {
    let mut weights = WeightsCache::default();
    let mut out = Vec::new();
    for u in unfinished {
        if !u.config.is_file() {
            bail!("{}: no config.toml, cannot resume variant {}", u.config.display(), u.folder);
        }
        let sources = Sources { files: vec![u.config.clone()], overrides: vec![], env: false };
        let mut v = variant(&sources, &u.config, &mut weights)?;
        let values: Vec<(String, toml::Value)> = u
            .values
            .split(';')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| Override::parse(kv).ok())
            .map(|o| (o.key, o.value))
            .collect();
        let mut session_values = values.clone();
        session_values.extend(u.repeat.map(|r| ("repeat".to_string(), toml::Value::Integer(r as i64))));
        v.group = if u.group == "." { v.spec.name.clone() } else { u.group.clone() };
        v.hparams = session(&session_values, &v.spec, None);
        (v.folder, v.values, v.repeat) = (u.folder.clone(), values, u.repeat);
        out.push(v);
    }
    Ok(out)
}

/// The spec of experiment `file` (its `extends` chain followed, `overrides` applied, no
/// environment) for a dataset with `classes`, without looking at any data: for tests, benches
/// and tools that want a model from a file.
pub fn spec_from_file(file: &Path, overrides: &[Override], classes: &[&str]) -> anyhow::Result<Spec> {
    let sources = Sources { files: load::extends_chain(file)?, overrides: overrides.to_vec(), env: false };
    let exp = load::load(&sources)?;
    Ok(resolve(exp, &file.display().to_string(), classes.iter().map(|c| c.to_string()).collect())?)
}

/// The spec a finished run's `config.toml` holds (standing alone: classes listed, no
/// environment or overrides), for `ablate predict`.
pub fn spec_of_run(config: &Path) -> anyhow::Result<Spec> {
    let exp = load::load(&Sources { files: vec![config.to_path_buf()], overrides: vec![], env: false })?;
    let classes = exp.data.classes.clone().context("config.toml lists no data.classes")?;
    Ok(resolve(exp, &config.display().to_string(), classes)?)
}

/// HParams session values: `experiment` (when several run together), the swept values, then
/// the spec's standard ones that were not swept.
fn session(values: &[(String, toml::Value)], spec: &Spec, experiment: Option<&str>) -> Vec<(String, toml::Value)> {
    let mut out: Vec<(String, toml::Value)> =
        experiment.map(|e| ("experiment".to_string(), toml::Value::String(e.into()))).into_iter().collect();
    out.extend(values.iter().cloned());
    out.extend(spec.hparams.iter().filter(|(k, _)| !values.iter().any(|(s, _)| s == k)).cloned());
    out
}

/// A variant's folder in the run (see [`VariantPlan::folder`]).
fn folder_name(multi: bool, experiment: &str, name: &str) -> String {
    match (multi, name.is_empty()) {
        (true, true) => experiment.to_string(),
        (true, false) => format!("{experiment}/{name}"),
        (false, true) => ".".into(),
        (false, false) => name.to_string(),
    }
}

/// Weights files read so far, by path.
#[derive(Default)]
struct WeightsCache(HashMap<PathBuf, Weights>);

impl WeightsCache {
    fn get(&mut self, path: &Path) -> anyhow::Result<Weights> {
        if let Some(w) = self.0.get(path) {
            return Ok(w.clone());
        }
        let w: Weights = Arc::new(weights::read(path)?);
        self.0.insert(path.to_path_buf(), w.clone());
        Ok(w)
    }
}

/// One variant from its sources: resolved, its data found, its model checked on the CPU.
fn variant(sources: &Sources, file: &Path, cache: &mut WeightsCache) -> anyhow::Result<VariantPlan> {
    let exp = load::load(sources)?;
    let root = Path::new(&exp.data.root);
    let train_dir = root.join(&exp.data.train_dir);
    let classes = folder::class_names(&train_dir, exp.data.classes.as_deref())?;
    let spec = resolve(exp, &file.display().to_string(), classes)?;
    let items = Arc::new(folder::labelled(&spec.train_dir(), &spec.class_names)?);
    folder::check_split(&items, &spec.class_names, &spec.data.split).map_err(anyhow::Error::msg)?;
    let test_items = match spec.test_dir() {
        Some(dir) => {
            let mut items = folder::unlabelled(&dir, spec.submission.id).map_err(|e| match e {
                DataError::NoImages { .. } => anyhow::Error::new(e).context(
                    "no test images: point data.test_dir at them, or set data.test_dir = \"\" to train without a submission",
                ),
                e => e.into(),
            })?;
            match spec.test_labels() {
                Some(labels) => folder::attach_test_labels(&mut items, &labels, &spec.class_names)?,
                None => _ = folder::labels_from_folders(&mut items, &dir, &spec.class_names),
            }
            Some(Arc::new(items))
        }
        None if spec.test_labels().is_some() => bail!("data.test_labels needs a test folder (data.test_dir)"),
        None => None,
    };
    let mut model = Model::build(&spec.layers, spec.input_hw, spec.seed, &Device::Cpu)?;
    check_param_groups(&spec, &model)?;
    let outputs = model.summary().rows.last().map_or(0, |r| r.out_shape.iter().product());
    if outputs != spec.num_classes() {
        bail!(
            "model.layers: the network ends in {outputs} outputs, but the dataset has {} classes ({}): end it with {{ linear = {{ out = \"$classes\" }} }}",
            spec.num_classes(),
            spec.class_names.join(", ")
        );
    }
    // A weights file that cannot be read or imported is reported in `init`, so that `check`
    // still shows the model.
    let weights = spec
        .init
        .as_ref()
        .map(|init| {
            cache
                .get(Path::new(&init.weights))
                .with_context(|| format!("model.init.weights = \"{}\"", init.weights))
                .map_err(|e| format!("{e:#}"))
        })
        .transpose();
    let init = match &weights {
        Ok(w) => prepare_model(&mut model, &spec, w.as_deref()).map_err(|e| format!("{e:#}")),
        Err(e) => Err(e.clone()),
    };
    Ok(VariantPlan {
        folder: String::new(),
        repeat: None,
        baseline: false,
        values: Vec::new(),
        hparams: Vec::new(),
        group: String::new(),
        summary: model.summary().clone(),
        spec,
        items,
        test_items,
        weights: weights.ok().flatten(),
        init,
    })
}

/// Every `optimizer.lr_mult` prefix and `optimizer.no_decay` prefix names some parameter of
/// `model` (a misspelt prefix would silently train with the defaults), and every multiplier is
/// a finite number >= 0.
fn check_param_groups(spec: &Spec, model: &Model) -> anyhow::Result<()> {
    let names: Vec<String> = model.trainable().into_iter().map(|(n, _)| n).collect();
    let mut tops: Vec<&str> = names.iter().map(|n| n.split('.').next().unwrap_or(n)).collect();
    tops.dedup();
    let o = &spec.optimizer;
    let prefixes = o.lr_mult.keys().map(|p| ("optimizer.lr_mult", p)).chain(
        o.no_decay.iter().filter(|r| !["bias", "norm"].contains(&r.as_str())).map(|p| ("optimizer.no_decay", p)),
    );
    for (key, prefix) in prefixes {
        if !names.iter().any(|n| n.starts_with(prefix.as_str())) {
            bail!("{key}: `{prefix}` is the start of no parameter's name (the model's start with {})", tops.join(", "));
        }
    }
    if let Some((p, m)) = o.lr_mult.iter().find(|(_, m)| !(m.is_finite() && **m >= 0.0)) {
        bail!("optimizer.lr_mult: `{p}` = {m}: expected a finite multiplier >= 0");
    }
    Ok(())
}

/// Loads `model.init`'s `weights` into `model` and applies `model.freeze`; says what it did.
pub fn prepare_model(
    model: &mut Model,
    spec: &Spec,
    weights: Option<&HashMap<String, Tensor>>,
) -> anyhow::Result<Option<String>> {
    let mut report = None;
    if let (Some(init), Some(file)) = (&spec.init, weights) {
        let r = weights::import(model, file, &init.skip, &init.weights)
            .with_context(|| format!("model.init.weights = \"{}\"", init.weights))?;
        report = Some(format!("weights from {}: {r}", init.weights));
    }
    model.freeze(&spec.freeze)?;
    if !spec.freeze.is_empty() {
        let n: usize = model.trainable().iter().map(|(_, v)| v.elem_count()).sum();
        let note = format!("frozen: {} ({} parameters left to train)", spec.freeze.join(", "), n);
        report = Some(report.map_or(note.clone(), |r| format!("{r}; {note}")));
    }
    Ok(report)
}

/// The experiment's name and its sweep's points (one empty point without a sweep). A
/// `model.params` key must exist to be swept: a misspelt one would change nothing.
/// An experiment file's sweep: its points, how often each trains, whether the repeats are
/// folds, and the point the others are compared with.
struct Points {
    /// The experiment's `name`.
    name: String,
    points: Vec<Variant>,
    repeats: usize,
    /// `data.folds`: each repeat validates on its own part.
    folds: usize,
    baseline: Option<String>,
}

/// The `seed` (and, for k-fold, `data.fold`) of repeat `r` of the variant the chain and
/// `overrides` make: `seed + r`, so repeat `r` of every variant shares a seed.
fn repeat_overrides(
    chain: &[PathBuf],
    overrides: &[Override],
    r: usize,
    folds: usize,
) -> anyhow::Result<Vec<Override>> {
    let seed = load::load(&Sources { files: chain.to_vec(), overrides: overrides.to_vec(), env: true })?.seed;
    let set =
        |key: &str, n: u64| Override { key: key.into(), value: toml::Value::Integer(n as i64), raw: n.to_string() };
    let mut out = vec![set("seed", seed.wrapping_add(r as u64) & (i64::MAX as u64))];
    if folds > 1 {
        out.push(set("data.fold", r as u64));
    }
    Ok(out)
}

fn sweep_points(file: &Path, request: &Request) -> anyhow::Result<Points> {
    let chain = load::extends_chain(file)?;
    let base = load::load(&Sources { files: chain, overrides: request.overrides.clone(), env: true })?;
    let file_name = file.display().to_string();
    let sweep = Sweep::from_table(&base.sweep, &file_name)?.with_cli(&request.sweep)?;
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
    // Without a sweep: one point, no values, no folder of its own.
    let points = if variants.is_empty() { vec![Variant { name: String::new(), values: Vec::new() }] } else { variants };
    let asked = request.repeats.or(sweep.repeats);
    let folds = base.data.folds;
    if folds > 1 && asked.is_some_and(|n| n != folds) {
        bail!(
            "{file_name}: data.folds = {folds} trains each variant once per fold; leave sweep.repeats (and --repeats) unset, or set it to {folds}"
        );
    }
    if let Some(b) = &sweep.baseline
        && !points.iter().any(|p| p.name == *b)
    {
        let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
        bail!("{file_name}: sweep.baseline = \"{b}\" is not one of the variants ({})", names.join(", "));
    }
    let repeats = if folds > 1 { folds } else { asked.unwrap_or(1) };
    Ok(Points { name: base.name, points, repeats, folds, baseline: sweep.baseline })
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

/// The name part of a run folder for experiments titled `title`.
fn run_title(files: usize, title: &str) -> String {
    // A long list of experiment names would make an unwieldy folder name.
    if title.len() > 60 { format!("{files}-experiments") } else { title.to_string() }
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
