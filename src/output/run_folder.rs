//! The run folder: `runs/<YYYY-MM-DD_HH-MM-SS>_<name>/`, created fresh and never reused (or
//! `<id>_<name>/`, shared by the shards of one sweep), and every path in it. Nothing else
//! spells a file name of a run.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Local};

use super::checkpoint::CheckpointDir;
use crate::spec::Shard;

/// A run folder: one variant at its root (`.`), or one sub-folder per variant.
#[derive(Debug, Clone)]
pub struct RunFolder {
    root: PathBuf,
}

impl RunFolder {
    /// A new folder `<runs_dir>/<time>_<title>` (`-2`, `-3`, ... when the name is taken).
    pub fn create(runs_dir: &Path, title: &str) -> anyhow::Result<Self> {
        let root = create(runs_dir, title, Local::now())
            .with_context(|| format!("cannot create a run folder under {}", runs_dir.display()))?;
        Ok(Self { root })
    }

    /// `<runs_dir>/<id>_<title>`, shared by the shards of one sweep. A shard (or unsharded
    /// run) that already ran there (its log exists) is refused: a run id is used once, unless
    /// `requeued` (Slurm runs a pre-empted or failed task again: it continues what it left).
    pub fn shared(runs_dir: &Path, title: &str, id: &str, shard: Shard, requeued: bool) -> anyhow::Result<Self> {
        let root = runs_dir.join(shared_name(id, title));
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create the run folder {}", root.display()))?;
        let folder = Self { root };
        let mine = folder.log(Some(shard));
        if !requeued && mine.exists() {
            bail!(
                "{} exists: run id {id} was used before (shard {shard}); pick another --run-id, or continue it with `ablate resume {}`",
                mine.display(),
                folder.root.display()
            );
        }
        Ok(folder)
    }

    /// An existing run folder made by `ablate run` (it has its variant list).
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let folder = Self { root: root.to_path_buf() };
        if !folder.variants_csv().is_file() && !folder.summary_csv().is_file() {
            // `run` takes its lock right after creating the folder: a folder with the lock file (or
            // nothing at all) and no variant list is a run killed while it was being set up.
            if root.join(".lock").is_file() || root.read_dir().is_ok_and(|mut d| d.next().is_none()) {
                bail!(
                    "{}: this run was stopped before its first variant started (it has no variants.csv yet): nothing to resume; start it again with ablate run",
                    root.display()
                );
            }
            bail!("{}: not a run folder made by ablate run (no variants.csv)", root.display());
        }
        Ok(folder)
    }

    /// Takes the folder for a writer that must be its only one (`run` without shards,
    /// `resume`, `summarize`): an exclusive lock on `.lock`, held until the guard is dropped.
    /// Another holder is named by its pid.
    pub fn lock(&self) -> anyhow::Result<RunLock> {
        let file = self.lock_file(".lock")?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock::holding(file)),
            Err(_) => Err(self.busy(".lock")),
        }
    }

    /// Takes the folder for one shard of a sweep: shards share `.lock` (so no `resume` or
    /// `summarize` runs beside them) and each holds its own shard's lock alone.
    pub fn lock_shard(&self, shard: Shard) -> anyhow::Result<[RunLock; 2]> {
        let shared = self.lock_file(".lock")?;
        if shared.try_lock_shared().is_err() {
            return Err(self.busy(".lock"));
        }
        let name = format!(".lock.shard-{}-of-{}", shard.index, shard.count);
        let own = self.lock_file(&name)?;
        match own.try_lock() {
            Ok(()) => Ok([RunLock { _file: shared }, RunLock::holding(own)]),
            Err(_) => Err(self.busy(&name)),
        }
    }

    /// Waits for, then holds, the lock of the run's summary files while one process rewrites
    /// them (a shard finishing a variant while another does).
    pub fn lock_summary(&self) -> anyhow::Result<RunLock> {
        let file = self.lock_file(".lock.summary")?;
        file.lock().with_context(|| format!("cannot lock {}", self.root.join(".lock.summary").display()))?;
        Ok(RunLock { _file: file })
    }

    fn lock_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let path = self.root.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))
    }

    fn busy(&self, name: &str) -> anyhow::Error {
        let pid = std::fs::read_to_string(self.root.join(name)).unwrap_or_default();
        let holder = if pid.trim().is_empty() { String::new() } else { format!(" (pid {})", pid.trim()) };
        anyhow::anyhow!(
            "{} is in use by another ablate process{holder}: wait for it to end, or stop it first",
            self.root.display()
        )
    }

    /// The folder at `root`, unchecked (for paths only).
    pub fn existing(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The folder's own name, the title of its summaries.
    pub fn title(&self) -> String {
        self.root.file_name().map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned())
    }

    /// Variant `name`'s folder: the root for `.`, else a sub-folder (created).
    pub fn variant(&self, name: &str) -> anyhow::Result<VariantFolder> {
        let dir = if name == "." { self.root.clone() } else { self.root.join(name) };
        // Inside this run's folder: nothing else's to overwrite.
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(VariantFolder { dir, run: self.root.clone() })
    }

    /// The variant's folder as it is, for reading (a resume).
    pub fn existing_variant(&self, name: &str) -> VariantFolder {
        VariantFolder {
            dir: if name == "." { self.root.clone() } else { self.root.join(name) },
            run: self.root.clone(),
        }
    }

    pub fn summary_csv(&self) -> PathBuf {
        self.root.join("summary.csv")
    }

    /// The run's variants in order, each as it was before training (written once).
    pub fn variants_csv(&self) -> PathBuf {
        self.root.join("variants.csv")
    }

    /// The run's own log (a sweep's: which variant when); a shard writes its own.
    pub fn log(&self, shard: Option<Shard>) -> PathBuf {
        match shard {
            Some(s) if s.count > 1 => self.root.join(format!("log.shard-{}-of-{}.txt", s.index, s.count)),
            _ => self.root.join("log.txt"),
        }
    }

    /// The experiment file as written, at the top of experiment `top`'s folders (`.`: the root).
    pub fn experiment_toml(&self, top: &str) -> PathBuf {
        if top == "." { self.root.join("experiment.toml") } else { self.root.join(top).join("experiment.toml") }
    }
}

/// A lock on a run folder (see [`RunFolder::lock`]); released when dropped or when the
/// process ends, however it ends.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// A lock held alone: its file names this process, for the message another one gets.
    fn holding(mut file: std::fs::File) -> Self {
        use std::io::{Seek, Write};
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Self { _file: file }
    }
}

/// One variant's folder: its resolved config, log, metrics, event files, checkpoints and
/// submission.
#[derive(Debug, Clone)]
pub struct VariantFolder {
    dir: PathBuf,
    /// The run folder (`dir` itself for a run of one variant).
    run: PathBuf,
}

impl VariantFolder {
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// The run folder the variant belongs to.
    pub fn run(&self) -> &Path {
        &self.run
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.txt")
    }
    /// How the variant ended (`ok` or `failed`, with its results); absent until it has.
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
    /// Evaluation reports: `val_confusion.csv`, `val_per_class.csv`, `val_confusion.png`, and
    /// those of `ablate evaluate`.
    pub fn eval_dir(&self) -> PathBuf {
        self.dir.join("eval")
    }
    /// Each validation image's label and its class under the best weights.
    pub fn val_predictions(&self) -> PathBuf {
        self.dir.join("val_predictions.csv")
    }
    pub fn submission(&self) -> PathBuf {
        self.dir.join("submission.csv")
    }
    /// The image cache of `data.cache = "disk"`.
    pub fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    /// The checkpoints as they are, for reading only (`ablate predict`, perhaps while the run
    /// still trains: nothing is cleaned up).
    pub fn saved(&self) -> CheckpointDir {
        CheckpointDir::reader(self.checkpoints_dir())
    }
    /// Removes the temporary files (`.tmp*`) of atomic writes a kill interrupted, in the folder
    /// and its `eval/`.
    pub fn remove_temporaries(&self) -> anyhow::Result<()> {
        for dir in [self.dir.clone(), self.eval_dir()] {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != self.dir => continue,
                Err(e) => return Err(anyhow::anyhow!("cannot list {}: {e}", dir.display())),
            };
            for entry in entries {
                let path = entry?.path();
                if path.is_file() && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".tmp")) {
                    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
                }
            }
        }
        Ok(())
    }

    /// The learner's checkpointer on `checkpoints/`; `resume` continues what it holds.
    /// The variant's checkpoints, recording the kernel plan in the run folder.
    pub fn checkpointer(&self, resume: bool) -> anyhow::Result<CheckpointDir> {
        Ok(CheckpointDir::open(self.checkpoints_dir(), resume)?.with_kernel_plan(self.path()))
    }
}

/// Folder name for a run of `name` started at `when`; the name is made filesystem-safe.
fn run_name(when: DateTime<Local>, name: &str) -> String {
    format!("{}_{}", when.format("%Y-%m-%d_%H-%M-%S"), safe(name))
}

/// Folder name of a run with a fixed id (the shards of one sweep share it): `<id>_<name>`.
fn shared_name(id: &str, name: &str) -> String {
    format!("{id}_{}", safe(name))
}

/// `name` with characters other than letters, digits and `-_.=,+` replaced by `_`.
pub fn safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.=,+".contains(c) { c } else { '_' }).collect()
}

/// Creates a new run folder under `root`; when the name is taken (two runs in one second) a
/// `-2`, `-3`, ... suffix is added. An existing folder is never reused.
fn create(root: &Path, name: &str, when: DateTime<Local>) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let base = run_name(when, name);
    for n in 1.. {
        let candidate = if n == 1 { root.join(&base) } else { root.join(format!("{base}-{n}")) };
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the suffix loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn same_second_runs_get_suffixes() {
        let root = tempfile::tempdir().unwrap();
        let when = Local.with_ymd_and_hms(2026, 11, 29, 7, 30, 12).unwrap();
        let a = create(root.path(), "le net", when).unwrap();
        let b = create(root.path(), "le net", when).unwrap();
        assert_eq!(a.file_name().unwrap(), "2026-11-29_07-30-12_le_net");
        assert_eq!(b.file_name().unwrap(), "2026-11-29_07-30-12_le_net-2");
    }
}
