//! The validated experiment: what every stage after `config` trusts and may import.
//!
//! `config::resolve` is the only producer of a [`Spec`]; nothing here reads files or TOML.
//! A leaf module: it imports nothing of ablate's but the kernels' plain parameter types
//! (`ops::params`). The small settings types that serde reads straight from the TOML (and
//! that `resolve` range-checks) live here too, so the raw schema and the spec share one type
//! each instead of two parallel copies.

mod layer;
mod optim;
mod recipe;
mod shard;
mod transform;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use layer::{
    Activation, BlockGraph, BlockSource, ConvConfig, DepthwiseConfig, LAYER_NAMES, LayerConfig, LinearConfig, Node,
    Projection, StageConfig,
};
pub use optim::{OptimizerConfig, OptimizerKind, ScheduleConfig, ScheduleKind, ThresholdMode};
pub use recipe::{EarlyStoppingConfig, EmaConfig, Monitor};
pub use shard::Shard;
pub use transform::{Affine, EraseValue, Erasing, Jitter, Phase, Transform, output_size};

/// A validated experiment: every reference substituted, every value in range.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Experiment name (the run folder's suffix).
    pub name: String,
    /// Seed of initialisation, split, shuffling and augmentation.
    pub seed: u64,
    pub data: DataSpec,
    /// Class names in label order.
    pub class_names: Vec<String>,
    pub train_transforms: Vec<Transform>,
    pub eval_transforms: Vec<Transform>,
    /// `(h, w)` the network is built for.
    pub input_hw: (usize, usize),
    pub layers: Vec<Node>,
    /// Saved weights to start from.
    pub init: Option<InitSpec>,
    /// Parameter-name prefixes kept fixed.
    pub freeze: Vec<String>,
    /// The epoch (1-based) from which every parameter trains.
    pub unfreeze_epoch: Option<usize>,
    pub optimizer: OptimizerConfig,
    pub train: TrainSpec,
    pub submission: SubmissionConfig,
    /// Test-time augmentation of predictions.
    pub predict: PredictConfig,
    /// The hyper-parameters every run reports to TensorBoard's HParams (optimizer, lr, batch
    /// size, epochs, seed), by config key.
    pub hparams: Vec<(String, toml::Value)>,
    /// The run's `config.toml`: the merged experiment with an absolute data root and its
    /// classes listed, standing alone (a resume reads it back and compares fingerprints).
    pub config_toml: String,
}

impl Spec {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
    /// The train folder.
    pub fn train_dir(&self) -> PathBuf {
        self.data.root.join(&self.data.train_dir)
    }
    /// The test folder, if the experiment has one.
    pub fn test_dir(&self) -> Option<PathBuf> {
        self.data.test_dir.as_ref().map(|t| self.data.root.join(t))
    }
    /// The test answers' file, if the experiment has one.
    pub fn test_labels(&self) -> Option<PathBuf> {
        self.data.test_labels.as_ref().map(|t| self.data.root.join(t))
    }
}

/// Where the images are and how they are batched.
#[derive(Debug, Clone)]
pub struct DataSpec {
    /// Absolute dataset root.
    pub root: PathBuf,
    /// Labelled images, relative to `root`.
    pub train_dir: String,
    /// Unlabelled test images, relative to `root`; `None` trains without a submission.
    pub test_dir: Option<String>,
    /// `id,label` answers for the test images, relative to `root`.
    pub test_labels: Option<String>,
    /// Which images validate.
    pub split: SplitSpec,
    /// Images per step (at least 1).
    pub batch_size: usize,
    /// Batches decoded ahead.
    pub prefetch: usize,
    /// Skip images that cannot be decoded (or are too large) instead of failing; I/O errors
    /// always stop the run.
    pub skip_bad: bool,
    pub cache: CacheMode,
    /// The most pixels an image may have.
    pub max_pixels: u64,
}

/// How the labelled images are split into training and validation (`data::folder::split`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitSpec {
    /// Fraction of each class held out (hold-out, `folds == 1`).
    pub val_fraction: f64,
    /// Seed of the shuffle that decides it.
    pub seed: u64,
    /// k-fold cross-validation: `folds` parts per class, part `fold` validates.
    pub folds: usize,
    pub fold: usize,
}

/// `data.max_pixels` unless set: 64 Mpx (8192 x 8192).
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 26;

/// Epochs, schedule, device and precision.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    /// At least 1.
    pub epochs: usize,
    pub lr_schedule: ScheduleConfig,
    pub device: DeviceChoice,
    pub precision: Precision,
    /// In [0, 1): the share of the target spread over all classes.
    pub label_smoothing: f64,
    /// The largest joint L2 norm of a step's gradients.
    pub clip_grad_norm: Option<f64>,
    /// Batch-level mixup and cutmix, when either is on.
    pub mixup: Option<MixupSpec>,
    /// Per-class weights of the loss.
    pub class_weights: Option<ClassWeights>,
    /// Batches whose gradients add up to one optimizer step (at least 1).
    pub accumulate: usize,
    /// A moving average of the weights, evaluated and used for predictions.
    pub ema: Option<EmaConfig>,
    /// Stop when a metric stops improving.
    pub early_stopping: Option<EarlyStoppingConfig>,
}

/// `train.mixup`, `train.cutmix` and their probabilities (timm's `--mixup`, `--cutmix`,
/// `--mixup-prob`, `--mixup-switch-prob`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixupSpec {
    /// Beta's α for mixup; 0 turns it off.
    pub mixup_alpha: f64,
    /// Beta's α for cutmix; 0 turns it off.
    pub cutmix_alpha: f64,
    /// Share of batches mixed at all.
    pub prob: f64,
    /// With both on, the share of mixed batches that use cutmix.
    pub switch_prob: f64,
}

/// `train.class_weights`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassWeights {
    /// `"balanced"`: `images / (classes · images of the class)` over the training split
    /// (scikit-learn's `compute_class_weight("balanced")`).
    Named(String),
    /// One weight per class, in class order.
    Given(Vec<f64>),
}

/// Pretrained weights to load into the declared model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSpec {
    /// A `.safetensors` file or a PyTorch `.pth` / `.pt` state dict.
    pub weights: String,
    /// Name prefixes left at their fresh initialisation (the head: `["fc"]`).
    #[serde(default)]
    pub skip: Vec<String>,
}

/// Where decoded images are kept between epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Decode every image every epoch.
    #[default]
    None,
    /// Keep each image as u8 after the pipeline's leading resize / centre crop, in RAM:
    /// height x width x 3 bytes per image.
    Memory,
    /// The same bytes in a file under the run folder (`cache/`), removed when the run ends;
    /// the kernel's page cache keeps what fits in RAM.
    Disk,
}

/// Arithmetic precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}
/// How predictions are made (the submission, `ablate predict`, `ablate evaluate`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PredictConfig {
    /// Test-time augmentation: the softmax outputs of the image and of each listed variant of
    /// it are averaged (timm's and fastai's TTA).
    pub tta: Vec<Tta>,
    /// Validate with the same augmentation (each epoch's val metrics, the best epoch, and
    /// `val_predictions.csv`).
    pub validate: bool,
}

impl PredictConfig {
    /// The test-time augmentation validation uses.
    pub fn validation_tta(&self) -> &[Tta] {
        if self.validate { &self.tta } else { &[] }
    }
}

/// A test-time variant of an image.
#[derive(Debug, Clone, PartialEq)]
pub enum Tta {
    /// The image mirrored left-right (torchvision's `hflip`).
    Hflip,
    /// The image through another eval pipeline (one that makes the model's input size).
    Pipeline(Vec<Transform>),
}

/// What `submission.csv` looks like.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmissionConfig {
    /// Write the `id,label` header line.
    #[serde(default = "default_true")]
    pub header: bool,
    /// `index` (class number, the contest's format) or `name` (class folder name).
    #[serde(default)]
    pub label: LabelFormat,
    /// `number` (the number in each test file's name, the contest's format) or `stem` (the
    /// file name without its extension).
    #[serde(default)]
    pub id: IdFormat,
    /// Also write each class's probability, one `p_<class>` column each.
    #[serde(default)]
    pub probs: bool,
}

/// How a test image's submission id is made from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdFormat {
    /// The first number in the name: `cat.0042.jpg` -> `42`.
    #[default]
    Number,
    /// The name without its extension: `cat.0042.jpg` -> `cat.0042`.
    Stem,
}

fn default_true() -> bool {
    true
}

impl Default for SubmissionConfig {
    fn default() -> Self {
        Self { header: true, label: LabelFormat::Index, id: IdFormat::Number, probs: false }
    }
}

/// How a predicted class is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelFormat {
    #[default]
    Index,
    Name,
}
/// A parsed `train.device` / `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device \"{other}\": expected auto, cpu, cuda or cuda:N")),
        }
    }
}
