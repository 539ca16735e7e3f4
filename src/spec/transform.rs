//! Validated image transform steps (`data::transforms` applies them).

/// One validated transform step.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Exact `(h, w)`.
    Resize((usize, usize)),
    /// Shorter side to this length, aspect ratio kept (torchvision's `Resize(int)`).
    ResizeShorter(usize),
    CenterCrop((usize, usize)),
    RandomCrop((usize, usize)),
    Hflip(f64),
    Normalize {
        mean: [f32; 3],
        std: [f32; 3],
    },
}

/// The `(h, w)` a pipeline produces whatever its input, if it fixes one.
pub fn output_size(pipeline: &[Transform]) -> Option<(usize, usize)> {
    pipeline
        .iter()
        .rev()
        .find_map(|t| match t {
            Transform::Resize(s) | Transform::CenterCrop(s) | Transform::RandomCrop(s) => Some(Some(*s)),
            // The other side follows each image's aspect ratio.
            Transform::ResizeShorter(_) => Some(None),
            Transform::Hflip(_) | Transform::Normalize { .. } => None,
        })
        .flatten()
}
