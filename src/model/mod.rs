//! The network: validated layer configs -> candle modules with seeded PyTorch-style init,
//! shape inference and a per-layer summary (shapes, parameters, multiply-adds).

pub mod builder;
pub mod layers;
pub mod summary;
pub mod weights;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::ModuleT;

use crate::spec::Node;
pub use summary::Summary;

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

/// A built network: its graph of layers and every named tensor it owns.
pub struct Model {
    graph: layers::GraphModule,
    /// Trainable parameters by name (`conv1.weight`, `fc.bias`, ...).
    params: BTreeMap<String, Var>,
    /// Non-trainable state saved in checkpoints (BatchNorm running statistics).
    buffers: BTreeMap<String, Var>,
    /// BatchNorm's `num_batches_tracked`, saved as i64 scalars like PyTorch's.
    counters: BTreeMap<String, Arc<AtomicI64>>,
    /// Name prefixes excluded from training.
    frozen: std::sync::RwLock<Vec<String>>,
    /// Each BatchNorm's evaluation-mode switch, by layer name.
    frozen_norms: BTreeMap<String, Arc<std::sync::atomic::AtomicBool>>,
    summary: Summary,
    /// The generator dropout masks come from (its position is saved for exact resumes).
    dropout_rng: Arc<Mutex<rand_chacha::ChaCha8Rng>>,
    autocast: builder::Autocast,
    device: Device,
}

/// `name` is `prefix` or lies under it (`layer1` covers `layer1.0.conv1.weight`, not `layer10`).
pub fn under_prefix(name: &str, prefix: &str) -> bool {
    name == prefix || name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'))
}

impl Model {
    /// Builds `layers` for inputs of `(3, h, w)`, initialising weights from `seed` as PyTorch
    /// does: kaiming-uniform convs (torchvision's kaiming-normal fan-out ones in networks with
    /// residual stages or adds), BatchNorm weight 1 and bias 0, linear layers uniform
    /// +-1/sqrt(fan_in).
    pub fn build(layers: &[Node], input_hw: (usize, usize), seed: u64, device: &Device) -> Result<Self, ModelError> {
        Self::build_for(layers, (3, input_hw.0, input_hw.1), seed, device)
    }

    /// [`Model::build`] for inputs of `(c, h, w)`, for networks that do not start from RGB
    /// images (a benchmark of one stage, say).
    pub fn build_for(
        layers: &[Node],
        input: (usize, usize, usize),
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut b = builder::Builder::new(seed, device, layers::conv_init(layers));
        let net = layers::build(layers, input, seed, &mut b)?;
        Ok(Self {
            graph: net.graph,
            params: b.params,
            buffers: b.buffers,
            counters: b.counters,
            frozen: Default::default(),
            frozen_norms: b.frozen_norms,
            summary: net.summary,
            dropout_rng: net.dropout_rng,
            autocast: b.autocast,
            device: device.clone(),
        })
    }

    /// Computes convolutions and linear layers in bf16 (`true`) or f32.
    pub fn set_bf16(&self, on: bool) {
        self.autocast.set(on);
    }

    /// Where the model's tensors live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Where the dropout generator's stream stands.
    pub fn dropout_word_pos(&self) -> u128 {
        self.dropout_rng.lock().expect("dropout rng poisoned").get_word_pos()
    }

    /// Moves the dropout generator to a saved position.
    pub fn set_dropout_word_pos(&self, pos: u128) {
        self.dropout_rng.lock().expect("dropout rng poisoned").set_word_pos(pos);
    }

    /// Every parameter, sorted by name.
    pub fn params(&self) -> Vec<(String, Var)> {
        self.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The parameters the optimizer updates: all but the frozen ones.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.params().into_iter().filter(|(k, _)| !self.is_frozen(k)).collect()
    }

    /// Keeps parameters under `prefixes` fixed, and the BatchNorm layers whose parameters
    /// they are in evaluation mode (running statistics used, not updated: the layers stay
    /// what they were trained to); a prefix that names nothing is an error.
    pub fn freeze(&mut self, prefixes: &[String]) -> Result<(), ModelError> {
        for p in prefixes {
            if !self.params.keys().any(|k| under_prefix(k, p)) {
                return Err(ModelError::Checkpoint {
                    path: "model.freeze".into(),
                    message: format!(
                        "`{p}` names no parameter; parameters start with: {}",
                        self.top_level_names().join(", ")
                    ),
                });
            }
        }
        *self.frozen.write().expect("frozen list poisoned") = prefixes.to_vec();
        for (layer, flag) in &self.frozen_norms {
            flag.store(self.is_frozen(&format!("{layer}.weight")), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether any parameter is kept fixed.
    pub fn has_frozen(&self) -> bool {
        !self.frozen.read().expect("frozen list poisoned").is_empty()
    }

    /// Whether parameter `name` is kept fixed.
    pub fn is_frozen(&self, name: &str) -> bool {
        self.frozen.read().expect("frozen list poisoned").iter().any(|p| under_prefix(name, p))
    }

    /// Trains every parameter from now on (fastai's `unfreeze`), BatchNorm in training mode.
    pub fn unfreeze(&self) {
        self.frozen.write().expect("frozen list poisoned").clear();
        for flag in self.frozen_norms.values() {
            flag.store(false, Ordering::Relaxed);
        }
    }

    /// First name segments of the parameters (`conv1`, `bn1`, `layer1`, `fc`).
    pub fn top_level_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.params.keys().map(|k| k.split('.').next().unwrap_or(k).to_string()).collect();
        v.dedup();
        v
    }

    /// Every tensor a checkpoint holds (parameters, buffers, counters), by name.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> =
            self.params.iter().chain(&self.buffers).map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        for (k, c) in &self.counters {
            let t = Tensor::new(c.load(Ordering::Relaxed), &Device::Cpu).expect("a scalar tensor");
            out.insert(k.clone(), t);
        }
        out
    }

    /// Overwrites tensor `name` with `value` (same shape; converted to the model's dtype and
    /// device).
    pub fn assign(&self, name: &str, value: &Tensor) -> Result<(), ModelError> {
        if let Some(var) = self.params.get(name).or_else(|| self.buffers.get(name)) {
            var.set(&value.to_dtype(DType::F32)?.to_device(var.device())?)?;
        } else if let Some(c) = self.counters.get(name) {
            let v = value.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            c.store(v.first().copied().unwrap_or(0.0) as i64, Ordering::Relaxed);
        } else {
            return Err(ModelError::Checkpoint {
                path: String::new(),
                message: format!("no tensor `{name}` in the model"),
            });
        }
        Ok(())
    }

    /// Loads every tensor of `state` into the model; names and shapes must match exactly.
    pub fn load_state_dict(&self, state: &HashMap<String, Tensor>, source: &str) -> Result<(), ModelError> {
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
        for name in ours.keys() {
            self.assign(name, &state[name])?;
        }
        Ok(())
    }
}

impl ModuleT for Model {
    /// `(n, 3, h, w)` -> logits `(n, classes)`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.graph.forward_t(xs, train)
    }
}
