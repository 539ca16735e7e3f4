//! Validated image transform steps (`data::transforms` applies them).
//!
//! Each random step is named after, and samples as, its torchvision class; the colour steps
//! follow torchvision's tensor functions (`adjust_brightness`, ...) on floats in [0, 1].

/// One validated transform step.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Exact `(h, w)`.
    Resize((usize, usize)),
    /// Shorter side to this length, aspect ratio kept (torchvision's `Resize(int)`).
    ResizeShorter(usize),
    CenterCrop((usize, usize)),
    RandomCrop((usize, usize)),
    /// torchvision's `RandomResizedCrop(size, scale, ratio)`: a box of a random share of the
    /// area and a log-uniform aspect ratio (10 tries, then the centre crop), resized bilinearly.
    RandomResizedCrop {
        size: (usize, usize),
        scale: [f64; 2],
        ratio: [f64; 2],
    },
    Hflip(f64),
    Vflip(f64),
    /// torchvision's `TrivialAugmentWide(num_magnitude_bins)`: one op of 14 at a random
    /// strength, on the 8-bit image.
    TrivialAugment {
        bins: usize,
        fill: [u8; 3],
    },
    /// torchvision's `RandAugment(num_ops = n, magnitude = m, num_magnitude_bins)`.
    RandAugment {
        n: usize,
        m: usize,
        bins: usize,
        fill: [u8; 3],
    },
    /// torchvision's `RandomAffine` (nearest neighbour, constant fill); `RandomRotation` is the
    /// case with only `degrees`, and turns the other way, as torchvision's does.
    RandomAffine(Affine),
    /// torchvision's `ColorJitter`: each factor drawn uniformly from its range, applied in a
    /// random order.
    ColorJitter(Jitter),
    /// torchvision's `RandomGrayscale(p)` (three equal channels); `Grayscale` is `p = 1`.
    Grayscale(f64),
    /// torchvision's `GaussianBlur(kernel, sigma)`: sigma drawn uniformly from the range.
    GaussianBlur {
        kernel: (usize, usize),
        sigma: [f64; 2],
    },
    Normalize {
        mean: [f32; 3],
        std: [f32; 3],
    },
    /// torchvision's `RandomErasing`, on the normalised tensor.
    RandomErasing(Erasing),
}

/// The ranges of a random affine transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    /// Rotation in degrees.
    pub degrees: [f64; 2],
    /// Largest shift as a share of the width and height.
    pub translate: Option<[f64; 2]>,
    pub scale: Option<[f64; 2]>,
    /// Shear ranges in degrees along x, and along y when given.
    pub shear: Option<([f64; 2], Option<[f64; 2]>)>,
    /// The colour of pixels from outside the image.
    pub fill: [u8; 3],
    /// `RandomRotation`: the angle turns counter-clockwise (torchvision's `rotate`).
    pub rotation: bool,
}

/// The factor ranges of a colour jitter; `None` leaves that property alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Jitter {
    pub brightness: Option<[f64; 2]>,
    pub contrast: Option<[f64; 2]>,
    pub saturation: Option<[f64; 2]>,
    pub hue: Option<[f64; 2]>,
}

/// Random erasing's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Erasing {
    pub p: f64,
    pub scale: [f64; 2],
    pub ratio: [f64; 2],
    pub value: EraseValue,
}

/// What an erased box is filled with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EraseValue {
    /// One value per channel.
    Constant([f32; 3]),
    /// Standard normal noise per pixel (torchvision's `value="random"`).
    Random,
}

/// When a step runs: geometric steps on 8-bit images, then colour steps on floats in [0, 1],
/// then `normalize`, then erasing on the normalised tensor (torchvision's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Geometry,
    Colour,
    Normalize,
    Erasing,
}

impl Transform {
    pub fn phase(&self) -> Phase {
        match self {
            Self::Resize(_)
            | Self::ResizeShorter(_)
            | Self::CenterCrop(_)
            | Self::RandomCrop(_)
            | Self::RandomResizedCrop { .. }
            | Self::Hflip(_)
            | Self::Vflip(_)
            | Self::RandomAffine(_)
            | Self::TrivialAugment { .. }
            | Self::RandAugment { .. } => Phase::Geometry,
            Self::ColorJitter(_) | Self::Grayscale(_) | Self::GaussianBlur { .. } => Phase::Colour,
            Self::Normalize { .. } => Phase::Normalize,
            Self::RandomErasing(_) => Phase::Erasing,
        }
    }

    /// Whether the step draws random numbers (such steps belong in `transforms.train`).
    pub fn is_random(&self) -> bool {
        match self {
            Self::Resize(_) | Self::ResizeShorter(_) | Self::CenterCrop(_) | Self::Normalize { .. } => false,
            Self::Grayscale(p) => *p < 1.0,
            Self::GaussianBlur { sigma, .. } => sigma[0] != sigma[1],
            _ => true,
        }
    }
}

/// The `(h, w)` a pipeline produces whatever its input, if it fixes one.
pub fn output_size(pipeline: &[Transform]) -> Option<(usize, usize)> {
    pipeline
        .iter()
        .rev()
        .find_map(|t| match t {
            Transform::Resize(s) | Transform::CenterCrop(s) | Transform::RandomCrop(s) => Some(Some(*s)),
            Transform::RandomResizedCrop { size, .. } => Some(Some(*size)),
            // The other side follows each image's aspect ratio.
            Transform::ResizeShorter(_) => Some(None),
            _ => None,
        })
        .flatten()
}
