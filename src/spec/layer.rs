//! The network as validated layer specs: one enum, one variant per layer kind.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ops::params::{ConvParams, PoolKind, PoolParams};

/// Convolution as validated from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvConfig {
    pub out: usize,
    pub kernel: usize,
    pub params: ConvParams,
    pub bias: bool,
}

/// Fully connected layer as validated from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearConfig {
    pub out: usize,
    pub bias: bool,
}

/// Depthwise convolution: one filter group per input channel, `multiplier` outputs each.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthwiseConfig {
    pub multiplier: usize,
    pub kernel: usize,
    /// Stride, padding and dilation (its groups are the input's channels, known when built).
    pub params: ConvParams,
    pub bias: bool,
}

/// Element-wise activations besides ReLU (which a BatchNorm or add may fuse), with PyTorch's
/// definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `x * sigmoid(x)` (swish).
    Silu,
    /// `x / 2 * (1 + erf(x / sqrt 2))`: the exact GELU, PyTorch's default.
    Gelu,
    /// `x * relu6(x + 3) / 6` (MobileNetV3).
    Hardswish,
    /// `relu6(x + 3) / 6`.
    Hardsigmoid,
}

impl Activation {
    pub const ALL: [Activation; 5] =
        [Activation::Sigmoid, Activation::Silu, Activation::Gelu, Activation::Hardswish, Activation::Hardsigmoid];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Sigmoid => "sigmoid",
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
            Activation::Hardswish => "hardswish",
            Activation::Hardsigmoid => "hardsigmoid",
        }
    }
}

/// One node of the model graph: a layer, the nodes it reads, and its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub layer: LayerConfig,
    /// What later nodes call it in `from` and merges, and its parameters' prefix
    /// (`conv1` -> `conv1.weight`); default: the kind's numbered name (`conv2`, `bn1`, `fc`).
    pub name: Option<String>,
    /// The nodes it reads: empty for the node before it (or the graph's input); a merge names
    /// two or more.
    pub from: Vec<String>,
    /// Its index in the list as written, where an `if` left an earlier node out (errors
    /// name this one).
    pub written_at: Option<usize>,
}

impl From<LayerConfig> for Node {
    fn from(layer: LayerConfig) -> Self {
        Node { layer, name: None, from: Vec::new(), written_at: None }
    }
}

/// A block template instantiated for one position: its nodes, what its input is called in
/// them, and which node is its output (default: the last).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockGraph {
    pub nodes: Vec<Node>,
    pub input: String,
    pub output: Option<String>,
}

/// Makes block `i` of a stage for inputs of a shape (`[c, h, w]`): the template's parameters
/// bound, `$in` the input's channels, the stride only on block 0.
pub type Instantiate = dyn Fn(usize, &[usize]) -> Result<BlockGraph, String> + Send + Sync;

/// How a stage makes its blocks. The template (TOML) stays with `config`, which hands the
/// model this closure: the model knows shapes, the config knows the file.
#[derive(Clone)]
pub struct BlockSource {
    /// The template and its arguments as written (`bottleneck { out = 256, groups = 32 }`):
    /// what Debug prints and equality compares.
    pub describe: String,
    make: Arc<Instantiate>,
}

impl BlockSource {
    pub fn new(describe: String, make: Arc<Instantiate>) -> Self {
        Self { describe, make }
    }

    /// Block `index` for inputs of `shape`.
    pub fn instantiate(&self, index: usize, shape: &[usize]) -> Result<BlockGraph, String> {
        (self.make)(index, shape)
    }
}

impl std::fmt::Debug for BlockSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl PartialEq for BlockSource {
    fn eq(&self, other: &Self) -> bool {
        self.describe == other.describe
    }
}

/// A stage: `repeat` blocks made from one template, the first with the stage's stride.
#[derive(Debug, Clone, PartialEq)]
pub struct StageConfig {
    /// The template's name (`basic`, `bottleneck`): the summary's kind for each block.
    pub block: String,
    pub repeat: usize,
    /// Block `i`'s scope: the pattern with `{}` replaced by `start + i` (default: the stage's
    /// name, then `.{}`).
    pub names: Option<String>,
    pub start: usize,
    pub blocks: BlockSource,
}

/// How an `add` projects an input whose shape differs from the first's (a residual
/// block's shortcut): a 1x1 conv + BatchNorm, torchvision's `downsample`, or first an average
/// pool (ResNet-D, timm's `avg_down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    Conv,
    AvgConv,
}

/// One validated layer.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerConfig {
    Stage(StageConfig),
    /// Element-wise sum of its inputs, projecting the later ones to the first's shape if
    /// asked and needed.
    Add(Option<Projection>),
    /// Inputs stacked along channels (features).
    Concat,
    /// The first input scaled by the second, broadcast over height and width (a
    /// squeeze-excite gate: `(c, h, w) * (c, 1, 1)` or `* (c)`).
    Mul,
    Conv(ConvConfig),
    Pool(PoolParams),
    GlobalAvgPool,
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    Flatten,
    Linear(LinearConfig),
    Dropout(f64),
    /// Whole channels zeroed with probability `p` in training (PyTorch's `Dropout2d`).
    Dropout2d(f64),
    /// Whole samples zeroed with probability `p` in training, the rest scaled by
    /// `1 / (1 - p)`: drop-path on a residual branch (torchvision's `StochasticDepth`, "row").
    StochasticDepth(f64),
    BatchNorm,
    Act(Activation),
    /// Average pooling to an `(h, w)` output, with PyTorch's `AdaptiveAvgPool2d` bins.
    AdaptiveAvgPool((usize, usize)),
    DepthwiseConv(DepthwiseConfig),
}

/// Every layer name the TOML accepts: those with settings (`{ conv = { ... } }`), then the
/// parameter-free ones (`"relu"`, see [`LayerConfig::plain`]).
pub const LAYER_NAMES: &[&str] = &[
    "conv",
    "max_pool",
    "avg_pool",
    "linear",
    "dropout",
    "dropout2d",
    "stochastic_depth",
    "adaptive_avg_pool",
    "depthwise_conv",
    "stage",
    "add",
    "concat",
    "mul",
    "global_avg_pool",
    "relu",
    "relu6",
    "flatten",
    "batch_norm",
    "sigmoid",
    "silu",
    "gelu",
    "hardswish",
    "hardsigmoid",
];

impl LayerConfig {
    /// The parameter-free layer the TOML names `name` (`"relu"`): such a layer is declared
    /// here alone, the raw schema reads it through this.
    pub fn plain(name: &str) -> Option<LayerConfig> {
        Some(match name {
            "global_avg_pool" => LayerConfig::GlobalAvgPool,
            "relu" => LayerConfig::Relu,
            "relu6" => LayerConfig::Relu6,
            "flatten" => LayerConfig::Flatten,
            "batch_norm" => LayerConfig::BatchNorm,
            other => LayerConfig::Act(Activation::ALL.into_iter().find(|a| a.name() == other)?),
        })
    }

    /// The layer's name as written in the TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerConfig::Conv(_) => "conv",
            LayerConfig::Pool(p) if p.kind == PoolKind::Max => "max_pool",
            LayerConfig::Pool(_) => "avg_pool",
            LayerConfig::GlobalAvgPool => "global_avg_pool",
            LayerConfig::Relu => "relu",
            LayerConfig::Relu6 => "relu6",
            LayerConfig::Flatten => "flatten",
            LayerConfig::Linear(_) => "linear",
            LayerConfig::Dropout(_) => "dropout",
            LayerConfig::Dropout2d(_) => "dropout2d",
            LayerConfig::StochasticDepth(_) => "stochastic_depth",
            LayerConfig::Act(a) => a.name(),
            LayerConfig::AdaptiveAvgPool(_) => "adaptive_avg_pool",
            LayerConfig::DepthwiseConv(_) => "depthwise_conv",
            LayerConfig::BatchNorm => "batch_norm",
            LayerConfig::Stage(_) => "stage",
            LayerConfig::Add(_) => "add",
            LayerConfig::Concat => "concat",
            LayerConfig::Mul => "mul",
        }
    }
}
