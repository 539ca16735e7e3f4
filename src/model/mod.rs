//! The network: validated layer configs -> candle modules with seeded PyTorch-style init,
//! shape inference and a per-layer summary (shapes, parameters, multiply-adds).

pub mod layers;
pub mod summary;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::ModuleT;

use crate::ops::conv::ConvParams;
use crate::ops::pool::PoolParams;
pub use layers::Layer;
pub use summary::{Summary, SummaryRow};

/// Convolution as validated from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvConfig {
    pub out: usize,
    pub kernel: usize,
    pub params: ConvParams,
    pub bias: bool,
    pub name: Option<String>,
}

/// Fully connected layer as validated from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearConfig {
    pub out: usize,
    pub bias: bool,
    pub name: Option<String>,
}

/// One validated layer.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerConfig {
    Conv(ConvConfig),
    Pool(PoolParams),
    GlobalAvgPool,
    Relu,
    Flatten,
    Linear(LinearConfig),
    Dropout(f64),
    BatchNorm,
}

impl LayerConfig {
    /// The layer's name as written in the TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerConfig::Conv(_) => "conv",
            LayerConfig::Pool(p) if p.kind == crate::ops::pool::PoolKind::Max => "max_pool",
            LayerConfig::Pool(_) => "avg_pool",
            LayerConfig::GlobalAvgPool => "global_avg_pool",
            LayerConfig::Relu => "relu",
            LayerConfig::Flatten => "flatten",
            LayerConfig::Linear(_) => "linear",
            LayerConfig::Dropout(_) => "dropout",
            LayerConfig::BatchNorm => "batch_norm",
        }
    }
}

/// A layer list that does not fit its input.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model.layers.{index} ({kind}): {message}")]
    Shape { index: usize, kind: &'static str, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A built network: its layers in order and every named tensor it owns.
pub struct Model {
    layers: Vec<Layer>,
    /// Trainable parameters by name (`conv1.weight`, `fc.bias`, ...).
    params: BTreeMap<String, Var>,
    /// Non-trainable state saved in checkpoints (BatchNorm running statistics).
    buffers: BTreeMap<String, Var>,
    summary: Summary,
}

impl Model {
    /// Builds `layers` for inputs of `(3, h, w)`, initialising weights from `seed` exactly as
    /// PyTorch's defaults do (kaiming-uniform with a = sqrt(5) for conv/linear weights, uniform
    /// +-1/sqrt(fan_in) biases, BatchNorm weight 1 and bias 0).
    pub fn build(
        layers: &[LayerConfig],
        input_hw: (usize, usize),
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let built = layers::build(layers, input_hw, seed, device)?;
        Ok(Self { layers: built.layers, params: built.params, buffers: built.buffers, summary: built.summary })
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Trainable parameters, sorted by name.
    pub fn params(&self) -> Vec<(String, Var)> {
        self.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every tensor a checkpoint holds (parameters and buffers), by name.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> =
            self.params.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        out.extend(self.buffers.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())));
        for layer in &self.layers {
            if let Layer::BatchNorm(bn) = layer {
                out.insert(format!("{}.num_batches_tracked", bn.name), bn.batches_tracked_tensor());
            }
        }
        out
    }

    /// Loads every tensor of `state` into the model; names and shapes must match exactly.
    pub fn load_state_dict(
        &self,
        state: &std::collections::HashMap<String, Tensor>,
        source: &str,
    ) -> Result<(), ModelError> {
        let mut problems = Vec::new();
        let ours = self.state_dict();
        for (name, mine) in &ours {
            match state.get(name) {
                None => problems.push(format!("missing tensor `{name}` {:?}", mine.dims())),
                Some(t) if t.dims() != mine.dims() => problems.push(format!(
                    "tensor `{name}`: checkpoint has {:?}, model has {:?}",
                    t.dims(),
                    mine.dims()
                )),
                Some(_) => {}
            }
        }
        problems.extend(state.keys().filter(|k| !ours.contains_key(*k)).map(|k| format!("unexpected tensor `{k}`")));
        if !problems.is_empty() {
            return Err(ModelError::Checkpoint { path: source.into(), message: problems.join("; ") });
        }
        for (name, var) in self.params.iter().chain(&self.buffers) {
            var.set(&state[name].to_dtype(DType::F32)?.to_device(var.device())?)?;
        }
        for layer in &self.layers {
            if let Layer::BatchNorm(bn) = layer {
                bn.set_batches_tracked(&state[&format!("{}.num_batches_tracked", bn.name)])?;
            }
        }
        Ok(())
    }
}

impl ModuleT for Model {
    /// `(n, 3, h, w)` -> logits `(n, classes)`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.layers.iter().try_fold(xs.clone(), |x, layer| layer.forward_t(&x, train))
    }
}
