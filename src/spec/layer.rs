//! The network as validated layer specs: one enum, one variant per layer kind.

use serde::{Deserialize, Serialize};

use crate::ops::params::{ConvParams, PoolKind, PoolParams};

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

/// A stage of residual blocks as validated from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct StageConfig {
    pub block: BlockKind,
    pub repeat: usize,
    pub out: usize,
    pub stride: usize,
    pub groups: usize,
    /// The bottleneck's 3x3 width: per group (torchvision) or fixed.
    pub mid: MidWidth,
    pub downsample: DownsampleKind,
    pub name: Option<String>,
}

/// Residual block kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet18/34).
    Basic,
    /// 1x1 reduce, 3x3 (grouped) conv, 1x1 expand by 4 (ResNet50+, ResNeXt).
    Bottleneck,
}

/// How a block's shortcut changes shape when it must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownsampleKind {
    /// Strided 1x1 conv + BatchNorm (torchvision).
    #[default]
    Conv,
    /// Average pool, then 1x1 conv + BatchNorm (ResNet-D, timm's `avg_down`).
    AvgConv,
}

/// How a bottleneck's 3x3 conv width is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidWidth {
    /// torchvision: `int(planes * width / 64) * groups`, planes = out / 4.
    PerGroup(usize),
    /// Exactly this many channels.
    Fixed(usize),
}

/// One validated layer.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerConfig {
    Stage(StageConfig),
    Conv(ConvConfig),
    Pool(PoolParams),
    GlobalAvgPool,
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    Flatten,
    Linear(LinearConfig),
    Dropout(f64),
    BatchNorm,
}

/// Every layer name the TOML accepts: those with settings (`{ conv = { ... } }`), then the
/// parameter-free ones (`"relu"`, see [`LayerConfig::plain`]).
pub const LAYER_NAMES: &[&str] = &[
    "conv",
    "max_pool",
    "avg_pool",
    "linear",
    "dropout",
    "stage",
    "global_avg_pool",
    "relu",
    "relu6",
    "flatten",
    "batch_norm",
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
            _ => return None,
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
            LayerConfig::BatchNorm => "batch_norm",
            LayerConfig::Stage(_) => "stage",
        }
    }
}

impl StageConfig {
    /// The 3x3 conv width of this stage's bottleneck blocks (validated by `resolve`).
    pub fn bottleneck_width(&self) -> Result<usize, String> {
        let (out, groups, mid) = (self.out, self.groups, self.mid);
        if !out.is_multiple_of(4) {
            return Err(format!("a bottleneck's out ({out}) must be 4 x its planes: a multiple of 4"));
        }
        let width = match mid {
            // torchvision: int(planes * (width_per_group / 64.0)) * groups
            MidWidth::PerGroup(w) => (out / 4 * w / 64) * groups,
            MidWidth::Fixed(m) => m,
        };
        if width == 0 || width % groups != 0 {
            return Err(format!("the 3x3 conv's width ({width}) must be a positive multiple of groups ({groups})"));
        }
        Ok(width)
    }
}
