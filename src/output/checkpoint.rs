//! Checkpoints: every named tensor of the model in one safetensors file, written atomically.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};

use crate::model::Model;

/// Saves the model's parameters and buffers to `path` (temp file + rename; candle's own
/// `safetensors::save` writes in place, so a crash mid-write would leave a broken file).
pub fn save(model: &Model, path: &Path) -> anyhow::Result<()> {
    let tensors: HashMap<String, Tensor> = model
        .state_dict()
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()?;
    let bytes = safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
        .with_context(|| format!("cannot serialise checkpoint {}", path.display()))?;
    super::write_atomic(path, &bytes).with_context(|| format!("cannot write checkpoint {}", path.display()))
}

/// Loads `path` into `model` (names and shapes must match).
pub fn load(model: &Model, path: &Path) -> anyhow::Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    model.load_state_dict(&tensors, &path.display().to_string())?;
    Ok(())
}
