//! The layers, one kind per file, each a candle `Module` / `ModuleT` built from its spec, and
//! the walk that builds a layer list in order, inferring each output shape and naming
//! parameters by path (`conv1.weight`, `layer1.0.bn2.running_var`, `fc.bias`).
//!
//! Adding a layer kind: a variant of `spec::LayerConfig` (and of the TOML's
//! `config::schema::LayerSpec`, which `resolve` maps to it), a file here with its module and
//! `build`, and its line in [`build`]'s match.

mod batch_norm;
mod conv;
mod dropout;
mod flatten;
mod linear;
mod pool;
mod relu;
mod relu6;
mod stage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_nn::ModuleT;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::ModelError;
use super::builder::{Builder, ConvInit};
use super::summary::{Summary, SummaryRow};
use crate::spec::LayerConfig;

/// A built layer: a module (none for a ReLU fused into the BatchNorm before it), its summary
/// rows (a stage has one per block) and its output shape.
pub(super) struct Built {
    pub module: Option<Box<dyn ModuleT>>,
    pub rows: Vec<SummaryRow>,
    pub out_shape: Vec<usize>,
}

/// Where the walk over the layer list stands.
pub(super) struct Walk<'w, 'a> {
    pub builder: &'w mut Builder<'a>,
    /// The input shape of the layer being built, without the batch dimension.
    pub shape: Vec<usize>,
    /// Its position in `model.layers`, and its neighbours'.
    pub index: usize,
    configs: &'w [LayerConfig],
    /// Default names handed out so far, per prefix (`conv`, `bn`, `fc`, `layer`).
    counts: HashMap<&'static str, usize>,
    pub dropout_rng: Arc<Mutex<ChaCha8Rng>>,
}

impl Walk<'_, '_> {
    /// The input as `(channels, height, width)`.
    pub fn spatial(&self) -> Result<(usize, usize, usize), String> {
        match self.shape[..] {
            [c, h, w] => Ok((c, h, w)),
            _ => Err(format!("expects a (channels, height, width) input, got {:?}", self.shape)),
        }
    }

    /// The next number for a default name with `prefix` (1-based).
    pub fn count(&mut self, prefix: &'static str) -> usize {
        let n = self.counts.entry(prefix).or_default();
        *n += 1;
        *n
    }

    /// How many layers of the list take default names with `prefix` (`fc`: linear layers).
    pub fn total(&self, prefix: &str) -> usize {
        let kind = match prefix {
            "fc" => "linear",
            other => other,
        };
        self.configs.iter().filter(|c| c.kind() == kind).count()
    }

    /// The next layer is a ReLU (a BatchNorm fuses it).
    pub fn relu_follows(&self) -> bool {
        matches!(self.configs.get(self.index + 1), Some(LayerConfig::Relu))
    }

    /// The previous layer is a BatchNorm (a ReLU is fused into it).
    pub fn after_batch_norm(&self) -> bool {
        self.index > 0 && matches!(self.configs[self.index - 1], LayerConfig::BatchNorm)
    }

    /// A layer with parameters, its row named `name`.
    pub fn built(
        &self,
        module: Box<dyn ModuleT>,
        name: String,
        out_shape: Vec<usize>,
        params: usize,
        macs: u64,
    ) -> Built {
        let kind = self.configs[self.index].kind();
        let row = SummaryRow { index: self.index, kind, name, out_shape: out_shape.clone(), params, macs };
        Built { module: Some(module), rows: vec![row], out_shape }
    }

    /// A parameter-free layer, its row named `<label><index>`.
    pub fn plain(&self, module: Box<dyn ModuleT>, label: &str, out_shape: Vec<usize>) -> Built {
        let kind = self.configs[self.index].kind();
        Built { module: Some(module), rows: vec![SummaryRow::plain(self.index, kind, label, &out_shape)], out_shape }
    }
}

/// A network's layers as built, with every named tensor.
pub(super) struct Network {
    pub dropout_rng: Arc<Mutex<ChaCha8Rng>>,
    pub layers: Vec<Box<dyn ModuleT>>,
    pub summary: Summary,
}

/// Builds every layer for `(c, h, w)` inputs into `b`, drawing weights in layer order.
///
/// Names follow torchvision where the list has its shape: top-level convs `conv1`, `conv2`, ...,
/// BatchNorms `bn1`, ..., stages `layer1`, ... with blocks `layer1.0.conv1`, and a single
/// linear layer `fc` (several: `fc1`, `fc2`, ...).
pub(super) fn build(
    configs: &[LayerConfig],
    (c, h, w): (usize, usize, usize),
    seed: u64,
    b: &mut Builder,
) -> Result<Network, ModelError> {
    // Dropout masks come from their own stream so adding dropout leaves the weights unchanged.
    let dropout_rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed.wrapping_add(0xD80))));
    let mut walk = Walk {
        builder: b,
        shape: vec![c, h, w],
        index: 0,
        configs,
        counts: HashMap::new(),
        dropout_rng: dropout_rng.clone(),
    };
    let mut layers = Vec::new();
    let mut summary = Summary::new(vec![c, h, w]);
    for (index, cfg) in configs.iter().enumerate() {
        walk.index = index;
        let built = match cfg {
            LayerConfig::Conv(c) => conv::build(c, &mut walk),
            LayerConfig::Pool(p) => pool::build(p, &mut walk),
            LayerConfig::GlobalAvgPool => pool::build_global(&mut walk),
            LayerConfig::Relu => relu::build(&mut walk),
            LayerConfig::Relu6 => relu6::build(&mut walk),
            LayerConfig::Flatten => flatten::build(&mut walk),
            LayerConfig::Linear(l) => linear::build(l, &mut walk),
            LayerConfig::Dropout(p) => dropout::build(*p, &mut walk),
            LayerConfig::BatchNorm => batch_norm::build(&mut walk),
            LayerConfig::Stage(s) => stage::build(s, &mut walk),
        }
        .map_err(|message| ModelError::Shape { index, kind: cfg.kind(), message })?;
        walk.shape = built.out_shape;
        summary.rows.extend(built.rows);
        layers.extend(built.module);
    }
    if walk.shape.len() != 1 {
        return Err(ModelError::Shape {
            index: configs.len() - 1,
            kind: configs[configs.len() - 1].kind(),
            message: format!(
                "the network must end in (classes) logits, it ends in {:?}: add global_avg_pool or a linear layer",
                walk.shape
            ),
        });
    }
    Ok(Network { dropout_rng, layers, summary })
}

/// Models with residual stages use torchvision's ResNet initialisation for every conv; others
/// PyTorch's layer defaults.
pub(super) fn conv_init(configs: &[LayerConfig]) -> ConvInit {
    if configs.iter().any(|c| matches!(c, LayerConfig::Stage(_))) {
        ConvInit::KaimingNormalFanOut
    } else {
        ConvInit::PyTorchDefault
    }
}
