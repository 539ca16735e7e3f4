//! Loading an experiment: the `extends` chain, the file itself, `ABLATE_*` environment
//! variables and `--set key=value` overrides, merged by figment in that order.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::ConfigError;
use super::schema::Experiment;

/// The experiment as the user wrote it: the files of the `extends` chain (base first) and the
/// overrides given on the command line.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Files in merge order: the root base first, the experiment file last.
    pub files: Vec<PathBuf>,
    /// `--set` overrides in the order given.
    pub overrides: Vec<Override>,
    /// Read `ABLATE_*` environment variables (off when re-reading a run's own config).
    pub env: bool,
}

/// One `--set key=value`, its value parsed as TOML (a bare word stays a string).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
    pub raw: String,
}

impl Override {
    /// Parses `key=value`; the value is read as a TOML value (`3`, `1e-3`, `true`, `[1, 2]`,
    /// `"text"`), falling back to a plain string.
    pub fn parse(arg: &str) -> Result<Self, ConfigError> {
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| ConfigError::Override { arg: arg.into(), reason: "expected key=value".into() })?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(ConfigError::Override {
                arg: arg.into(),
                reason: "the key must be a dotted path such as optimizer.lr".into(),
            });
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Ok(Self { key: key.to_string(), value, raw: raw.to_string() })
    }
}

/// Reads the `extends` chain starting at `path`: returns the files, root base first.
pub fn extends_chain(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut chain = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(path.to_path_buf());
    while let Some(file) = next.take() {
        let canonical = file.canonicalize().map_err(|source| ConfigError::Read { path: file.clone(), source })?;
        if !seen.insert(canonical.clone()) {
            let mut cycle: Vec<String> = chain.iter().map(|p: &PathBuf| p.display().to_string()).collect();
            cycle.push(file.display().to_string());
            return Err(ConfigError::ExtendsCycle { chain: cycle.join(" -> ") });
        }
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read { path: file.clone(), source })?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: file.clone(), message: e.to_string() })?;
        if let Some(base) = table.get("extends") {
            let base = base.as_str().ok_or_else(|| ConfigError::Invalid {
                path: file.display().to_string(),
                key: "extends".into(),
                message: "expected a path string".into(),
            })?;
            let dir = file.parent().unwrap_or(Path::new("."));
            next = Some(dir.join(base));
        }
        chain.push(file);
    }
    chain.reverse();
    Ok(chain)
}

/// Top-level keys of an experiment, the only ones `ABLATE_*` variables may set.
const SECTIONS: [&str; 8] = ["name", "seed", "data", "transforms", "model", "optimizer", "train", "submission"];

/// A provider for one `--set`, so figment's errors name it as the source of a bad value.
struct SetProvider<'a>(&'a Override);

impl Provider for SetProvider<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("--set {}={}", self.0.key, self.0.raw))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let value = Value::serialize(&self.0.value)?;
        let dict = figment::util::nest(&self.0.key, value).into_dict().expect("nest of a dotted key is a dict");
        Ok(Profile::Default.collect(dict))
    }
}

/// Builds the merged figment for `sources`: files (base first), then `ABLATE_*` environment
/// variables (`ABLATE_TRAIN__EPOCHS=3` sets `train.epochs`), then `--set` overrides.
///
/// An override whose path runs through an array (`model.layers.3.conv.out=8`) replaces that
/// element of the merged array, so one layer can be changed without restating the list.
pub fn figment(sources: &Sources) -> Result<Figment, ConfigError> {
    let mut fig = Figment::new();
    for file in &sources.files {
        fig = fig.merge(Toml::file_exact(file));
    }
    if sources.env {
        // Only variables naming a config section count, so unrelated ABLATE_* variables (a
        // test harness's, say) are not mistaken for misspelt keys.
        let env = Env::prefixed("ABLATE_").filter(|k| {
            let section = k.as_str().split("__").next().unwrap_or_default();
            SECTIONS.iter().any(|s| section.eq_ignore_ascii_case(s))
        });
        fig = fig.merge(env.split("__"));
    }
    for ov in &sources.overrides {
        let segments: Vec<&str> = ov.key.split('.').collect();
        match segments.iter().position(|s| s.parse::<usize>().is_ok()) {
            None => fig = fig.merge(SetProvider(ov)),
            Some(i) => {
                // figment merges arrays by replacement: rebuild the array with the element changed.
                let array_key = segments[..i].join(".");
                let mut array: toml::Value = fig.extract_inner(&array_key).map_err(|e| ConfigError::Override {
                    arg: format!("{}={}", ov.key, ov.raw),
                    reason: e.to_string(),
                })?;
                set_path(&mut array, &segments[i..], ov.value.clone())
                    .map_err(|reason| ConfigError::Override { arg: format!("{}={}", ov.key, ov.raw), reason })?;
                let whole = Override { key: array_key, value: array, raw: ov.raw.clone() };
                fig = fig.merge(SetProvider(&whole));
            }
        }
    }
    Ok(fig)
}

/// Sets `value` at `path` (table keys and array indexes) inside `root`, creating tables.
pub fn set_path(root: &mut toml::Value, path: &[&str], value: toml::Value) -> Result<(), String> {
    let Some((head, rest)) = path.split_first() else {
        *root = value;
        return Ok(());
    };
    let child = match root {
        toml::Value::Array(items) => {
            let i: usize = head.parse().map_err(|_| format!("`{head}` is not an index into a list"))?;
            let len = items.len();
            items.get_mut(i).ok_or_else(|| format!("index {i} is past the end of a list of {len}"))?
        }
        toml::Value::Table(t) => t.entry(head.to_string()).or_insert_with(|| toml::Value::Table(Default::default())),
        // A bare layer name ("relu") has no settings to change.
        other => return Err(format!("cannot set `{head}` inside the value {other}")),
    };
    set_path(child, rest, value)
}

/// Loads and deserializes an experiment; errors name the file, the key and what was expected.
pub fn load(sources: &Sources) -> Result<Experiment, ConfigError> {
    let fig = figment(sources)?;
    fig.extract::<Experiment>().map_err(ConfigError::from_figment)
}
