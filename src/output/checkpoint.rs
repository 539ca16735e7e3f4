//! Checkpoints: every named tensor of the model in one safetensors file, written atomically,
//! and [`CheckpointDir`], the learner's [`Checkpointer`] on a run folder's `checkpoints/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};

use crate::model::Model;
use crate::train::optim::Optimizer;
use crate::train::{Checkpointer, TrainState};

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

/// A variant's `checkpoints/`: `last.safetensors`, `optimizer.safetensors` and `state.toml`
/// (written in that order: the state file makes them a set), and `best.safetensors`.
pub struct CheckpointDir {
    dir: PathBuf,
    /// Whether a committed state is to be continued (a resume) or ignored (a fresh start).
    resume: bool,
}

impl CheckpointDir {
    /// `dir` (created if missing); `resume` continues what it holds.
    pub fn open(dir: PathBuf, resume: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir, resume })
    }

    /// The best weights so far.
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }
}

impl Checkpointer for CheckpointDir {
    fn committed(&self) -> anyhow::Result<Option<TrainState>> {
        let path = self.dir.join("state.toml");
        if !self.resume || !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)?;
        Ok(Some(toml::from_str(&text).with_context(|| format!("cannot read {}", path.display()))?))
    }

    fn restore(&mut self, model: &Model, opt: &mut Optimizer) -> anyhow::Result<()> {
        load(model, &self.dir.join("last.safetensors"))?;
        let path = self.dir.join("optimizer.safetensors");
        let tensors = candle_core::safetensors::load(&path, model.device())
            .with_context(|| format!("cannot read {}", path.display()))?;
        opt.load_state_dict(&tensors)?;
        Ok(())
    }

    fn commit(&mut self, model: &Model, opt: &Optimizer, state: &TrainState) -> anyhow::Result<()> {
        save(model, &self.dir.join("last.safetensors"))?;
        let tensors = opt.state_dict()?;
        let bytes = safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)?;
        super::write_atomic(&self.dir.join("optimizer.safetensors"), &bytes)?;
        super::write_atomic(&self.dir.join("state.toml"), toml::to_string(state)?.as_bytes())?;
        Ok(())
    }

    fn save_best(&mut self, model: &Model) -> anyhow::Result<()> {
        save(model, &self.best())
    }
}
