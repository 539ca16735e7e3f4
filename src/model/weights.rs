//! Pretrained weights: a torchvision / timm / ablate state dict (`.safetensors` or PyTorch
//! `.pth`) loaded by name into the declared model, with the head skipped.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::{Model, ModelError, under_prefix};

/// What an import did, tensor by tensor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Model tensors filled from the file.
    pub loaded: Vec<String>,
    /// Model tensors left at their fresh initialisation (under a `skip` prefix).
    pub skipped: Vec<String>,
    /// BatchNorm counters the file lacks (timm drops them); they stay at 0.
    pub missing_counters: Vec<String>,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tensors loaded, {} skipped", self.loaded.len(), self.skipped.len())?;
        if !self.skipped.is_empty() {
            write!(f, " ({})", self.skipped.join(", "))?;
        }
        if !self.missing_counters.is_empty() {
            write!(f, ", {} num_batches_tracked missing from the file (left at 0)", self.missing_counters.len())?;
        }
        Ok(())
    }
}

/// Reads a state dict: safetensors by extension, anything else as a PyTorch pickle (a plain
/// state dict, or one under a `state_dict` / `model` key as training checkpoints store it).
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    let err = |message: String| ModelError::Checkpoint { path: path.display().to_string(), message };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        return candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| err(e.to_string()));
    }
    for key in [None, Some("state_dict"), Some("model")] {
        let tensors = candle_core::pickle::read_all_with_key(path, key).map_err(|e| err(e.to_string()))?;
        if !tensors.is_empty() {
            return Ok(tensors.into_iter().collect());
        }
    }
    Err(err("no tensors found (expected a state dict, or one under `state_dict` or `model`)".into()))
}

/// Loads `file`'s tensors into `model` by name, leaving tensors under `skip` prefixes fresh.
/// Every other model tensor must be in the file with the same shape, and every file tensor
/// outside `skip` must belong to the model; otherwise the error lists each offender.
pub fn import(
    model: &Model,
    file: &HashMap<String, Tensor>,
    skip: &[String],
    source: &str,
) -> Result<ImportReport, ModelError> {
    let skipped = |name: &str| skip.iter().any(|p| under_prefix(name, p));
    let ours = model.state_dict();
    let mut report = ImportReport::default();
    let mut problems = Vec::new();
    for (name, mine) in &ours {
        if skipped(name) {
            report.skipped.push(name.clone());
            continue;
        }
        match file.get(name) {
            Some(t) if t.dims() == mine.dims() => report.loaded.push(name.clone()),
            Some(t) => problems.push(format!("`{name}`: file {:?}, model {:?}", t.dims(), mine.dims())),
            None if name.ends_with(".num_batches_tracked") => report.missing_counters.push(name.clone()),
            None => problems.push(format!("`{name}`: missing from the file, model {:?}", mine.dims())),
        }
    }
    let mut extra: Vec<String> = file
        .iter()
        .filter(|(k, _)| !ours.contains_key(*k) && !skipped(k))
        .map(|(k, t)| format!("`{k}`: file {:?}, not in the model", t.dims()))
        .collect();
    extra.sort();
    problems.extend(extra);
    if !problems.is_empty() {
        return Err(ModelError::Checkpoint {
            path: source.into(),
            message: format!("does not fit the model ({} tensors):\n  {}", problems.len(), problems.join("\n  ")),
        });
    }
    for name in &report.loaded {
        model.assign(name, &file[name])?;
    }
    Ok(report)
}
