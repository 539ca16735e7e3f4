//! Raw experiment configuration: serde structs that mirror the TOML file key for key.
//!
//! Every struct denies unknown fields so a typo is an error, never a silently ignored key.
//! `resolve.rs` turns these into the validated spec the rest of the program trusts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One experiment file, after `extends`, environment and `--set` overrides are merged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Path of a base file this one extends (relative to this file); deep-merged, this file wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// Experiment name: the suffix of the run folder.
    pub name: String,
    /// Seed for weight initialisation, the validation split, shuffling and augmentation.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Where the images are and how they are batched.
    pub data: DataConfig,
    /// Transforms applied to training and evaluation images.
    #[serde(default)]
    pub transforms: TransformsConfig,
    /// The network, as a list of layers.
    pub model: ModelConfig,
    /// Optimizer and its hyper-parameters.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Epochs, schedule, device.
    #[serde(default)]
    pub train: TrainConfig,
    /// Format of `submission.csv`.
    #[serde(default)]
    pub submission: SubmissionConfig,
    /// How predictions are made: `tta = ["hflip"]`.
    #[serde(default)]
    pub predict: PredictSpec,
    /// Swept keys: `"model.params.groups" = [1, 2, 4]`, and `mode = "grid" | "zip"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sweep: BTreeMap<String, toml::Value>,
}

fn default_seed() -> u64 {
    42
}

/// The image folder: `root/train/<class>/*` (labelled) and `root/test/*` (unlabelled).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset root; relative paths are taken from the directory `ablate` runs in.
    pub root: String,
    /// Sub-folder of `root` with one folder per class.
    #[serde(default = "default_train_dir")]
    pub train_dir: String,
    /// Sub-folder of `root` with unlabelled test images named by number; `""` for none.
    #[serde(default = "default_test_dir")]
    pub test_dir: String,
    /// The test images' answers, `id,label` (label: a class name or number), relative to
    /// `root`: the run then reports its test accuracy (with `best.safetensors`). Default:
    /// `test_labels.csv` when `root` has one; `""` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_labels: Option<String>,
    /// Class names in label order; default: the sorted sub-folder names of the train folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// Fraction of each class held out for validation (stratified, seeded by `split_seed`).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Seed of the validation split, apart from `seed`: repeats of a variant (other seeds)
    /// train and validate on the same images.
    #[serde(default)]
    pub split_seed: u64,
    /// k-fold cross-validation instead of one hold-out: each class in `folds` stratified parts;
    /// each repeat validates on its own part (`fold`) and trains on the others. 1: hold-out.
    #[serde(default = "default_folds")]
    pub folds: usize,
    /// The part that validates, `0..folds` (set for each repeat by the sweep).
    #[serde(default)]
    pub fold: usize,
    /// Images per training step.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches decoded ahead of the trainer.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Skip unreadable images with a warning instead of stopping with an error.
    #[serde(default)]
    pub skip_bad: bool,
    /// Keep decoded, resized images between epochs: `none`, `memory` or `disk`.
    #[serde(default)]
    pub cache: CacheMode,
    /// Refuse (or, with `skip_bad`, skip) an image of more pixels than this: a small file can
    /// decode into gigabytes.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

fn default_max_pixels() -> u64 {
    crate::spec::DEFAULT_MAX_PIXELS
}

fn default_train_dir() -> String {
    "train".into()
}
fn default_test_dir() -> String {
    "test".into()
}
fn default_val_fraction() -> f64 {
    0.1
}
fn default_folds() -> usize {
    1
}
fn default_batch_size() -> usize {
    64
}
fn default_prefetch() -> usize {
    2
}

/// Transform pipelines, applied in order; every pipeline ends in a float CHW tensor in [0, 1],
/// normalised if a `normalize` step is present (it must come last).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformsConfig {
    /// Training pipeline (random steps allowed).
    #[serde(default)]
    pub train: Vec<TransformSpec>,
    /// Validation, test and prediction pipeline (deterministic steps only).
    #[serde(default)]
    pub eval: Vec<TransformSpec>,
}

/// One image transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformSpec {
    /// `[h, w]`: exact size; a single number: shorter side to that size, aspect kept.
    Resize(Size),
    /// `[h, w]` taken from the centre.
    CenterCrop(Size),
    /// `[h, w]` taken at a random position (training only).
    RandomCrop(Size),
    /// torchvision's `RandomResizedCrop` (training only).
    RandomResizedCrop(ResizedCropSpec),
    /// Horizontal flip with this probability (training only).
    Hflip(f64),
    /// Vertical flip with this probability (training only).
    Vflip(f64),
    /// torchvision's `RandomRotation(degrees)`: `d` for [-d, d], or `[lo, hi]`.
    RandomRotation(Range),
    /// torchvision's `RandomAffine`.
    RandomAffine(AffineSpec),
    /// torchvision's `TrivialAugmentWide`: `{}` or `{ bins = 31, fill = 0 }`.
    TrivialAugment(AutoAugmentSpec),
    /// torchvision's `RandAugment`: `{ n = 2, m = 9, bins = 31, fill = 0 }`.
    RandAugment(AutoAugmentSpec),
    /// torchvision's `ColorJitter`.
    ColorJitter(JitterSpec),
    /// `true`: torchvision's `Grayscale(3)`.
    Grayscale(bool),
    /// torchvision's `RandomGrayscale(p)`.
    RandomGrayscale(f64),
    /// torchvision's `GaussianBlur`.
    GaussianBlur(BlurSpec),
    /// `"imagenet"` or `{ mean = [..3], std = [..3] }`.
    Normalize(NormalizeSpec),
    /// torchvision's `RandomErasing`, after `normalize`.
    RandomErasing(ErasingSpec),
}

/// `[predict]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictSpec {
    /// `"hflip"`, or an eval pipeline (a list of transforms), per variant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tta: Vec<TtaSpec>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub validate: bool,
}

/// One test-time variant as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TtaSpec {
    Named(String),
    Pipeline(Vec<TransformSpec>),
}

/// A range written as one number `x` (meaning depends on the key: [-x, x] or [1-x, 1+x]) or
/// as `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Range {
    One(f64),
    Both([f64; 2]),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizedCropSpec {
    pub size: Size,
    /// Share of the area: default [0.08, 1.0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<[f64; 2]>,
    /// Aspect ratio w / h: default [3/4, 4/3].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<[f64; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffineSpec {
    pub degrees: Range,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translate: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<[f64; 2]>,
    /// `s` for [-s, s] along x, `[lo, hi]` along x, or `[xlo, xhi, ylo, yhi]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shear: Option<Shear>,
    /// Colour of the pixels from outside the image: one value or `[r, g, b]` (0-255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<Fill>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Shear {
    One(f64),
    X([f64; 2]),
    XY([f64; 4]),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Fill {
    Grey(u8),
    Rgb([u8; 3]),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoAugmentSpec {
    /// RandAugment: ops per image (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// RandAugment: the magnitude bin (default 9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<usize>,
    /// Magnitude bins (default 31).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<Fill>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitterSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brightness: Option<Range>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast: Option<Range>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation: Option<Range>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hue: Option<Range>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlurSpec {
    /// Odd kernel size, `k` or `[h, w]`.
    pub kernel: Size,
    /// `s`, or `[lo, hi]` to draw from: default [0.1, 2.0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma: Option<Range>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasingSpec {
    /// Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// Default [0.02, 0.33].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<[f64; 2]>,
    /// Default [0.3, 3.3].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<[f64; 2]>,
    /// A number, `[r, g, b]`, or `"random"`: default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<EraseSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EraseSpec {
    One(f32),
    Rgb([f32; 3]),
    Named(String),
}

/// A size written as `256` or `[256, 256]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Side(usize),
    HeightWidth([usize; 2]),
}

/// Normalisation statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NormalizeSpec {
    /// A named preset: `"imagenet"`.
    Preset(String),
    /// Explicit per-channel statistics.
    Explicit { mean: [f32; 3], std: [f32; 3] },
}

/// The network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Input size `[h, w]` the network is built for; default: what the eval transforms produce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<[usize; 2]>,
    /// Named values the layers refer to as `"$name"` (`$classes` is the number of classes).
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Layers in order: the model graph (see [`NodeSpec`]).
    pub layers: Vec<NodeSpec>,
    /// Block templates the stages instantiate, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocks: BTreeMap<String, BlockTemplate>,
    /// Start from saved weights (torchvision / timm / ablate names) instead of random ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSpec>,
    /// Parameter-name prefixes kept fixed during training (`["conv1", "bn1", "layer1"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
    /// From this epoch (1-based) every parameter trains (fastai's `fine_tune`: the head
    /// first, then all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfreeze_epoch: Option<usize>,
}

/// A whole number written literally or as a `"$name"` reference into `model.params`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Int {
    Value(usize),
    Ref(String),
}

/// Hand-written so a bad value says what was expected (an untagged derive only says that
/// no variant matched).
impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IntVisitor;
        impl serde::de::Visitor<'_> for IntVisitor {
            type Value = Int;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number >= 0 or a \"$name\" reference")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int, E> {
                usize::try_from(v)
                    .map(Int::Value)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int, E> {
                usize::try_from(v)
                    .map(Int::Value)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Int, E> {
                Ok(Int::Ref(v.to_string()))
            }
        }
        d.deserialize_any(IntVisitor)
    }
}

/// One layer of the network, written `"relu"` or `{ conv = { out = 6, kernel = 5 } }`.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSpec {
    /// 2-D convolution.
    Conv(ConvSpec),
    /// Max pooling.
    MaxPool(PoolSpec),
    /// Average pooling (zero padding counts towards the mean, as in PyTorch).
    AvgPool(PoolSpec),
    /// Fully connected; its input size is inferred (and a 4-D input flattened).
    Linear(LinearSpec),
    /// Dropout with this probability (training only).
    Dropout(f64),
    /// Whole channels dropped with this probability (training only).
    Dropout2d(f64),
    /// Whole samples dropped with this probability (training only): drop-path.
    StochasticDepth(f64),
    /// Average pooling to `[h, w]` (PyTorch's `AdaptiveAvgPool2d`).
    AdaptiveAvgPool([Int; 2]),
    /// A convolution with one group per input channel: `{ depthwise_conv = { kernel = 3, padding = 1 } }`.
    DepthwiseConv(DepthwiseSpec),
    /// `repeat` blocks of a template: `{ stage = { block = "bottleneck", repeat = 3, out = 256 } }`.
    Stage(StageSpec),
    /// The sum of the named nodes: `{ add = ["bn2", "input"] }`.
    Add(Vec<String>),
    /// The named nodes stacked along channels.
    Concat(Vec<String>),
    /// `[x, gate]`: x scaled by the gate, broadcast over height and width.
    Mul(Vec<String>),
    /// A layer without settings, written by name: `"relu"`, `"flatten"`, `"batch_norm"`
    /// (over channels, or features after a linear layer), `"global_avg_pool"` (mean over
    /// height and width: `(n, c, h, w) -> (n, c)`).
    Plain(LayerConfig),
}

/// One node of the model graph: a layer, and beside its kind the node's `name` (what later
/// nodes read it by, and its parameters' prefix), `from` (the node it reads, default the one
/// before) and, on an `add`, `project`:
/// `{ conv = { out = 64, kernel = 1 }, name = "proj", from = "input" }`, `{ relu = {}, name = "act" }`.
///
/// (De)serialised by hand below, so that parameter-free layers are declared once, in the spec
/// ([`LayerConfig::plain`]), while a misspelt name still gets figment's "did you mean".
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub layer: LayerSpec,
    pub name: Option<String>,
    pub from: Option<String>,
    /// An add's projection of an input of another shape: `true` (`"conv"`) or `"avg_conv"`.
    pub project: Option<ProjectSpec>,
    /// `if`: the node is in the graph only when this holds: a boolean or a `$` condition
    /// (`"$stride == 1 && $in == $out"`).
    pub when: Option<toml::Value>,
}

impl From<LayerSpec> for NodeSpec {
    fn from(layer: LayerSpec) -> Self {
        NodeSpec { layer, name: None, from: None, project: None, when: None }
    }
}

/// `project = true`, `false`, `"conv"` or `"avg_conv"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProjectSpec {
    On(bool),
    Kind(Projection),
}

/// The keys a node may have beside its kind.
const NODE_KEYS: &[&str] = &["name", "from", "project", "if"];

impl Serialize for NodeSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let plain = NodeSpec::from(self.layer.clone());
        if let (LayerSpec::Plain(c), true) = (&self.layer, *self == plain) {
            return s.serialize_str(c.kind());
        }
        let (name, settings) = match &self.layer {
            LayerSpec::Plain(_) => ("", Ok(toml::Value::Table(Default::default()))),
            LayerSpec::Conv(c) => ("conv", toml::Value::try_from(c)),
            LayerSpec::MaxPool(p) => ("max_pool", toml::Value::try_from(p)),
            LayerSpec::AvgPool(p) => ("avg_pool", toml::Value::try_from(p)),
            LayerSpec::Linear(l) => ("linear", toml::Value::try_from(l)),
            LayerSpec::Dropout(p) => ("dropout", toml::Value::try_from(p)),
            LayerSpec::Dropout2d(p) => ("dropout2d", toml::Value::try_from(p)),
            LayerSpec::StochasticDepth(p) => ("stochastic_depth", toml::Value::try_from(p)),
            LayerSpec::AdaptiveAvgPool(hw) => ("adaptive_avg_pool", toml::Value::try_from(hw)),
            LayerSpec::DepthwiseConv(c) => ("depthwise_conv", toml::Value::try_from(c)),
            LayerSpec::Stage(st) => ("stage", toml::Value::try_from(st)),
            LayerSpec::Add(v) => ("add", toml::Value::try_from(v)),
            LayerSpec::Concat(v) => ("concat", toml::Value::try_from(v)),
            LayerSpec::Mul(v) => ("mul", toml::Value::try_from(v)),
        };
        let name = match &self.layer {
            LayerSpec::Plain(c) => c.kind(),
            _ => name,
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(name, &settings.map_err(S::Error::custom)?)?;
        if let Some(n) = &self.name {
            m.serialize_entry("name", n)?;
        }
        if let Some(f) = &self.from {
            m.serialize_entry("from", f)?;
        }
        if let Some(p) = &self.project {
            m.serialize_entry("project", p)?;
        }
        if let Some(w) = &self.when {
            m.serialize_entry("if", w)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for NodeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess};
        struct NodeVisitor;
        impl<'de> de::Visitor<'de> for NodeVisitor {
            type Value = NodeSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a layer: a name such as \"relu\", or one key such as { conv = { out = 6, kernel = 5 } }")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<NodeSpec, E> {
                LayerConfig::plain(name)
                    .map(|c| LayerSpec::Plain(c).into())
                    .ok_or_else(|| E::unknown_variant(name, LAYER_NAMES))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeSpec, A::Error> {
                let (mut layer, mut kind) = (None, String::new());
                let (mut name, mut from, mut project, mut when) = (None, None, None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "name" => name = Some(map.next_value()?),
                        "from" => from = Some(map.next_value()?),
                        "project" => project = Some(map.next_value()?),
                        "if" => when = Some(map.next_value()?),
                        _ if layer.is_some() => {
                            return Err(de::Error::custom(format!(
                                "a layer is one key (besides {}), found `{kind}` and `{key}`",
                                NODE_KEYS.join(", ")
                            )));
                        }
                        _ => {
                            layer = Some(layer_value(&key, &mut map)?);
                            kind = key;
                        }
                    }
                }
                let layer = layer.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                Ok(NodeSpec { layer, name, from, project, when })
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

/// The settings of a layer of kind `kind`, the map's next value.
fn layer_value<'de, A: serde::de::MapAccess<'de>>(kind: &str, map: &mut A) -> Result<LayerSpec, A::Error> {
    use serde::de::Error;
    Ok(match kind {
        "conv" => LayerSpec::Conv(map.next_value()?),
        "max_pool" => LayerSpec::MaxPool(map.next_value()?),
        "avg_pool" => LayerSpec::AvgPool(map.next_value()?),
        "linear" => LayerSpec::Linear(map.next_value()?),
        "dropout" => LayerSpec::Dropout(map.next_value()?),
        "dropout2d" => LayerSpec::Dropout2d(map.next_value()?),
        "stochastic_depth" => LayerSpec::StochasticDepth(map.next_value()?),
        "adaptive_avg_pool" => LayerSpec::AdaptiveAvgPool(map.next_value()?),
        "depthwise_conv" => LayerSpec::DepthwiseConv(map.next_value()?),
        "stage" => LayerSpec::Stage(map.next_value()?),
        "add" => LayerSpec::Add(map.next_value()?),
        "concat" => LayerSpec::Concat(map.next_value()?),
        "mul" => LayerSpec::Mul(map.next_value()?),
        plain => {
            let Some(layer) = LayerConfig::plain(plain) else {
                return Err(A::Error::unknown_variant(plain, LAYER_NAMES));
            };
            let settings: BTreeMap<String, toml::Value> = map.next_value()?;
            if !settings.is_empty() {
                return Err(A::Error::custom(format!(
                    "`{plain}` takes no settings: write it as \"{plain}\" (or {{ {plain} = {{}}, name = ... }})"
                )));
            }
            LayerSpec::Plain(layer)
        }
    })
}

// The model's own types the TOML names through their serde names (the model does not
// import the config).
pub use crate::spec::{
    CacheMode, ClassWeights, EarlyStoppingConfig, EmaConfig, InitSpec, OptimizerConfig, Precision, Projection,
    ScheduleConfig, SubmissionConfig,
};
pub use crate::spec::{LAYER_NAMES, LayerConfig};

/// A stage: `repeat` blocks of template `block`, the first one with the stage's `stride`;
/// every other key is an argument of the template (`out = 256`, `groups = "$groups"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    /// A template of `[model.blocks]` (or a shipped one: `basic`, `bottleneck`).
    pub block: String,
    /// Blocks in the stage (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Int>,
    /// Parameter-name prefix (default `layer<N>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Block names, `{}` standing for the block's number (default `"<name>.{}"`):
    /// `names = "features.{}"` with `start = 2` names them `features.2`, `features.3`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<String>,
    /// The first block's number (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Int>,
    /// The template's arguments. `flatten` here, against the schema's rule, on purpose: the
    /// keys are the template's parameters, which serde cannot know; `resolve` checks each one
    /// against the template (an unknown key is an error naming it and the nearest parameter).
    #[serde(flatten)]
    pub args: BTreeMap<String, toml::Value>,
}

/// A block template, `[model.blocks.<name>]`: a graph with parameters, made once per block
/// of the stages that name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockTemplate {
    /// Parameters a stage must give.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// Parameters with their defaults, which may refer to each other (`mid = "$out / 4"`);
    /// `$in` is the block's input channels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, toml::Value>,
    /// What the layers call the block's input (default `input`).
    #[serde(default = "default_block_input")]
    pub input: String,
    /// The node whose value the block returns (default: the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The nodes, as model.layers, with `$name` anywhere a value goes.
    pub layers: Vec<toml::Value>,
}

fn default_block_input() -> String {
    "input".into()
}

/// Convolution settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvSpec {
    /// Output channels.
    pub out: Int,
    /// Square kernel side.
    pub kernel: Int,
    /// Stride (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Int>,
    /// Zero padding on every side (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<Int>,
    /// Dilation (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dilation: Option<Int>,
    /// Channel groups: input and output channels must both divide by it (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Int>,
    /// Learn a bias (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<bool>,
    /// Parameter name prefix (default `conv<N>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Depthwise convolution settings. The window fields repeat [`ConvSpec`]'s: serde cannot
/// `flatten` a shared struct into one that denies unknown keys, and every schema struct does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepthwiseSpec {
    /// Square kernel side.
    pub kernel: Int,
    /// Outputs per input channel (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<Int>,
    /// Stride (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Int>,
    /// Zero padding on every side (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<Int>,
    /// Dilation (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dilation: Option<Int>,
    /// Learn a bias (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<bool>,
}

/// Pooling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Square window side.
    pub kernel: Int,
    /// Stride (default: the kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Int>,
    /// Padding on every side (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<Int>,
}

/// Fully connected settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSpec {
    /// Output features (`"$classes"` for the head).
    pub out: Int,
    /// Learn a bias (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<bool>,
    /// Parameter name prefix (default `fc<N>`, or `fc` when it is the only linear layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Training loop settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training split.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Learning-rate schedule, evaluated every step.
    #[serde(default)]
    pub lr_schedule: ScheduleConfig,
    /// `auto` (CUDA when built with it and present, else CPU), `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32`, or `bf16`: convolutions and linear layers computed in bf16 (CUDA only), weights,
    /// BatchNorm statistics and the loss in f32.
    #[serde(default)]
    pub precision: Precision,
    /// Cross-entropy against targets smoothed by this much (PyTorch's
    /// `F.cross_entropy(label_smoothing=)`): `1 - ε` on the label, `ε / classes` on every class.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Scale every step's gradients to this joint L2 norm at most (PyTorch's
    /// `clip_grad_norm_(parameters, max_norm)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// Beta's α of batch-level mixup (timm's `--mixup`); 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mixup: f64,
    /// Beta's α of batch-level cutmix (timm's `--cutmix`); 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cutmix: f64,
    /// Share of batches mixed (timm's `--mixup-prob`).
    #[serde(default = "default_mixup_prob", skip_serializing_if = "is_one")]
    pub mixup_prob: f64,
    /// With mixup and cutmix both on, the share of mixed batches cut (`--mixup-switch-prob`).
    #[serde(default = "default_switch_prob", skip_serializing_if = "is_half")]
    pub mixup_switch_prob: f64,
    /// `"balanced"` or one weight per class: PyTorch's `F.cross_entropy(weight=)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<ClassWeights>,
    /// Batches whose gradients add up to one optimizer step.
    #[serde(default = "default_accumulate", skip_serializing_if = "is_one_batch")]
    pub accumulate: usize,
    /// `{ decay, warmup }`: a moving average of the weights (timm's ModelEmaV2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaConfig>,
    /// `{ monitor, patience, min_delta }` (Lightning's EarlyStopping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingConfig>,
}

fn default_accumulate() -> usize {
    1
}
fn is_one_batch(v: &usize) -> bool {
    *v == 1
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
fn is_one(v: &f64) -> bool {
    *v == 1.0
}
fn is_half(v: &f64) -> bool {
    *v == 0.5
}
fn default_mixup_prob() -> f64 {
    1.0
}
fn default_switch_prob() -> f64 {
    0.5
}

fn default_epochs() -> usize {
    10
}
fn default_device() -> String {
    "auto".into()
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            lr_schedule: ScheduleConfig::default(),
            device: default_device(),
            precision: Precision::default(),
            label_smoothing: 0.0,
            clip_grad_norm: None,
            mixup: 0.0,
            cutmix: 0.0,
            mixup_prob: default_mixup_prob(),
            mixup_switch_prob: default_switch_prob(),
            class_weights: None,
            accumulate: 1,
            ema: None,
            early_stopping: None,
        }
    }
}
