//! Checkpoints: every named tensor of the model in one safetensors file, written atomically,
//! and [`CheckpointDir`], the learner's [`Checkpointer`] on a run folder's `checkpoints/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};

use crate::model::Model;
use crate::train::optim::Optimizer;
use crate::train::{Checkpointer, TrainState};

/// Loads `path` into `model` (names and shapes must match).
pub fn load(model: &Model, path: &Path) -> anyhow::Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    model.load_state_dict(&tensors, &path.display().to_string())?;
    Ok(())
}

/// A variant's `checkpoints/`, kept as a transaction: each commit is a folder written in full
/// (`.partial-<name>/`: `last.safetensors`, `optimizer.safetensors`, `best.safetensors`, then
/// `state.toml` with the SHA-256 of each), synced, renamed to `<name>/`, and only then named
/// by `CURRENT` (replaced atomically). A kill at any instant leaves `CURRENT` naming a
/// complete commit or the one before it. `last.safetensors` and `best.safetensors` beside
/// `CURRENT` are views of the current commit (hard links) for people and `ablate predict`;
/// a resume reads only what `CURRENT` names, verified against its hashes.
pub struct CheckpointDir {
    dir: PathBuf,
    /// The variant folder, whose `kernels.json` records the kernel plan (none: not recorded).
    plan_dir: Option<PathBuf>,
    /// Whether a committed state is to be continued (a resume) or ignored (a fresh start).
    resume: bool,
}

/// What `state.toml` holds: the training state and the hash of every file of the commit.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Commit {
    state: TrainState,
    /// File name -> SHA-256 (hex).
    sha256: std::collections::BTreeMap<String, String>,
}

const FILES: [&str; 3] = ["last.safetensors", "optimizer.safetensors", "best.safetensors"];
/// The weights' moving average, in commits of runs that keep one (`train.ema`).
const EMA: &str = "ema.safetensors";

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `tensors` as a safetensors file.
fn serialize(tensors: &HashMap<String, Tensor>, what: &Path) -> anyhow::Result<Vec<u8>> {
    safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
        .with_context(|| format!("cannot serialise {}", what.display()))
}

/// Writes `bytes` to a new file `path` and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("cannot write {}", path.display()))
}

/// Syncs a folder, so that the renames inside it survive a power cut.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

impl CheckpointDir {
    /// `dir` (created if missing); `resume` continues what it holds. Leftovers of a commit a
    /// kill interrupted are removed, and the views are made to match `CURRENT`.
    pub fn open(dir: PathBuf, resume: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let this = Self { dir, resume, plan_dir: None };
        let current = this.current()?;
        for entry in std::fs::read_dir(&this.dir).with_context(|| format!("cannot list {}", this.dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let stale_commit = path.is_dir() && current.as_deref() != Some(name.as_str());
            if name.starts_with(".partial-") || name.starts_with(".tmp") || (stale_commit && is_commit_name(&name)) {
                remove(&path)?;
            }
        }
        if let Some(name) = &current {
            this.refresh_views(name)?;
        }
        Ok(this)
    }

    /// `dir` as it is, to read weights from.
    pub fn reader(dir: PathBuf) -> Self {
        Self { dir, resume: false, plan_dir: None }
    }

    /// Loads the current commit's `best` or `last` weights into `model`, verified (hash and
    /// finite values).
    pub fn load_weights(&self, model: &Model, which: &str) -> anyhow::Result<()> {
        let name = self.current()?.with_context(|| format!("{} holds no finished epoch", self.dir.display()))?;
        let file = format!("{which}.safetensors");
        let (_, files) = self.read_commit(&name)?;
        let path = self.dir.join(&name).join(&file);
        let bytes = files.get(file.as_str()).with_context(|| format!("no {file} in {}", self.dir.display()))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .with_context(|| format!("cannot read {}", path.display()))?;
        check_finite(&tensors, &path)?;
        model.load_state_dict(&tensors, &path.display().to_string())?;
        Ok(())
    }

    /// The name of the current commit, if any.
    fn current(&self) -> anyhow::Result<Option<String>> {
        let path = self.dir.join("CURRENT");
        if !path.exists() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = name.trim().to_string();
        if !is_commit_name(&name) || !self.dir.join(&name).is_dir() {
            bail!("{}: names `{name}`, which is not a checkpoint in {}", path.display(), self.dir.display());
        }
        Ok(Some(name))
    }

    /// Commit `name`'s `state.toml`.
    fn read_record(&self, name: &str) -> anyhow::Result<Commit> {
        let path = self.dir.join(name).join("state.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("cannot read {}", path.display()))
    }

    /// Commit `name`'s record and files, the files checked against their hashes.
    fn read_commit(&self, name: &str) -> anyhow::Result<(Commit, HashMap<&'static str, Vec<u8>>)> {
        let dir = self.dir.join(name);
        let commit = self.read_record(name)?;
        let mut files = HashMap::new();
        let ema = commit.sha256.contains_key(EMA).then_some(EMA);
        for file in FILES.into_iter().chain(ema) {
            let path = dir.join(file);
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let expected = commit.sha256.get(file).map(String::as_str).unwrap_or("(none)");
            if sha256(&bytes) != expected {
                bail!(
                    "{} is damaged: its SHA-256 is not the one state.toml recorded when it was written; the run cannot continue from it",
                    path.display()
                );
            }
            files.insert(file, bytes);
        }
        Ok((commit, files))
    }

    /// Makes `last.safetensors` and `best.safetensors` beside `CURRENT` the commit's.
    fn refresh_views(&self, name: &str) -> anyhow::Result<()> {
        for file in ["last.safetensors", "best.safetensors"] {
            let tmp = self.dir.join(format!(".tmp-view-{file}"));
            let _ = std::fs::remove_file(&tmp);
            std::fs::hard_link(self.dir.join(name).join(file), &tmp)
                .with_context(|| format!("cannot link {}", tmp.display()))?;
            std::fs::rename(&tmp, self.dir.join(file))
                .with_context(|| format!("cannot replace {}", self.dir.join(file).display()))?;
            // rename() does nothing when both names are links to one file already.
            if tmp.exists() {
                std::fs::remove_file(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
            }
        }
        Ok(())
    }
}

/// Commit folders are named `e<epochs done>-b<batches done>`.
fn commit_name(state: &TrainState) -> String {
    format!("e{}-b{}", state.epochs_done, state.batches_done)
}

fn is_commit_name(name: &str) -> bool {
    name.strip_prefix('e')
        .and_then(|r| r.split_once("-b"))
        .is_some_and(|(e, b)| !e.is_empty() && !b.is_empty() && e.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()))
}

fn remove(path: &Path) -> anyhow::Result<()> {
    let r = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    r.with_context(|| format!("cannot remove {}", path.display()))
}

/// Fails naming `source` if a tensor holds NaN or infinity.
fn check_finite(tensors: &HashMap<String, Tensor>, source: &Path) -> anyhow::Result<()> {
    for (name, t) in tensors {
        if t.dtype().is_float() {
            let finite =
                t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite());
            if !finite {
                bail!("{}: tensor `{name}` holds NaN or infinite values", source.display());
            }
        }
    }
    Ok(())
}

impl CheckpointDir {
    /// Records the kernel plan in the variant folder `dir` ([`super::kernel_plan`]).
    pub fn with_kernel_plan(self, dir: &Path) -> Self {
        Self { plan_dir: Some(dir.to_path_buf()), ..self }
    }
}

impl Checkpointer for CheckpointDir {
    fn record_kernel_plan(&mut self) -> anyhow::Result<Option<String>> {
        match &self.plan_dir {
            Some(dir) => super::kernel_plan::save(dir),
            None => Ok(None),
        }
    }

    fn committed(&self) -> anyhow::Result<Option<TrainState>> {
        if !self.resume {
            return Ok(None);
        }
        match self.current()? {
            Some(name) => Ok(Some(self.read_commit(&name)?.0.state)),
            None => Ok(None),
        }
    }

    fn restore(&mut self, model: &Model, opt: &mut Optimizer) -> anyhow::Result<Option<HashMap<String, Tensor>>> {
        let name = self.current()?.context("no committed checkpoint to restore")?;
        let (_, files) = self.read_commit(&name)?;
        let dir = self.dir.join(&name);
        let load = |file: &'static str, device: &Device| -> anyhow::Result<HashMap<String, Tensor>> {
            let path = dir.join(file);
            let tensors = candle_core::safetensors::load_buffer(&files[file], device)
                .with_context(|| format!("cannot read {}", path.display()))?;
            check_finite(&tensors, &path)?;
            Ok(tensors)
        };
        model.load_state_dict(
            &load("last.safetensors", &Device::Cpu)?,
            &dir.join("last.safetensors").display().to_string(),
        )?;
        opt.load_state_dict(&load("optimizer.safetensors", model.device())?)?;
        files.contains_key(EMA).then(|| load(EMA, model.device())).transpose()
    }

    fn commit(
        &mut self,
        model: &Model,
        opt: &Optimizer,
        state: &TrainState,
        best: bool,
        ema: Option<&HashMap<String, Tensor>>,
    ) -> anyhow::Result<()> {
        let name = commit_name(state);
        let partial = self.dir.join(format!(".partial-{name}"));
        if partial.exists() {
            remove(&partial)?;
        }
        std::fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        let weights: HashMap<String, Tensor> = model
            .state_dict()
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
            .collect::<candle_core::Result<_>>()?;
        let last = serialize(&weights, &partial.join("last.safetensors"))?;
        let optimizer = serialize(&opt.state_dict()?, &partial.join("optimizer.safetensors"))?;
        let ema = ema.map(|e| serialize(e, &partial.join(EMA))).transpose()?;
        let mut sha = std::collections::BTreeMap::new();
        let written =
            [("last.safetensors", Some(&last)), ("optimizer.safetensors", Some(&optimizer)), (EMA, ema.as_ref())];
        for (file, bytes) in written.into_iter().filter_map(|(f, b)| b.map(|b| (f, b))) {
            write_synced(&partial.join(file), bytes)?;
            sha.insert(file.to_string(), sha256(bytes));
            super::crash::point("commit: file written");
        }
        // The best weights: this state's own (its average, with one) when it is the best,
        // else the previous commit's.
        let previous = self.current()?;
        let best_hash = match (&previous, best) {
            (Some(prev), false) => {
                let from = self.dir.join(prev).join("best.safetensors");
                std::fs::hard_link(&from, partial.join("best.safetensors"))
                    .with_context(|| format!("cannot link {} into {}", from.display(), partial.display()))?;
                self.read_record(prev)?.sha256.get("best.safetensors").cloned().unwrap_or_default()
            }
            _ if ema.is_some() => {
                std::fs::hard_link(partial.join(EMA), partial.join("best.safetensors"))
                    .with_context(|| format!("cannot link best.safetensors in {}", partial.display()))?;
                sha256(ema.as_ref().expect("checked"))
            }
            _ => {
                std::fs::hard_link(partial.join("last.safetensors"), partial.join("best.safetensors"))
                    .with_context(|| format!("cannot link best.safetensors in {}", partial.display()))?;
                sha256(&last)
            }
        };
        sha.insert("best.safetensors".into(), best_hash);
        let record = toml::to_string(&Commit { state: state.clone(), sha256: sha })?;
        write_synced(&partial.join("state.toml"), record.as_bytes())?;
        sync_dir(&partial)?;
        super::crash::point("commit: state written");
        let done = self.dir.join(&name);
        if previous.as_deref() == Some(name.as_str()) {
            bail!("internal error: position {name} committed twice");
        }
        if done.exists() {
            // Left by a kill between its rename and `CURRENT`: never current, so not needed.
            remove(&done)?;
        }
        std::fs::rename(&partial, &done).with_context(|| format!("cannot rename {}", partial.display()))?;
        sync_dir(&self.dir)?;
        super::crash::point("commit: folder renamed");
        super::write_atomic(&self.dir.join("CURRENT"), format!("{name}\n").as_bytes())?;
        sync_dir(&self.dir)?;
        super::crash::point("commit: CURRENT replaced");
        self.refresh_views(&name)?;
        super::crash::point("commit: views linked");
        if let Some(prev) = previous.filter(|p| *p != name) {
            remove(&self.dir.join(prev))?;
        }
        Ok(())
    }
}
