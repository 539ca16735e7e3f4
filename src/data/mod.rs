//! Data: image-folder discovery, transforms, and batches decoded ahead of the trainer.

pub mod augment;
pub mod autoaugment;
pub mod folder;
pub mod loader;
pub mod transforms;

use std::path::PathBuf;

/// Everything that can go wrong reading a dataset; each names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("missing {what}: {} is not a directory", path.display())]
    MissingDir { path: PathBuf, what: &'static str },
    #[error("no class folders in {}: expected train/<class>/<images>", path.display())]
    NoClasses { path: PathBuf },
    #[error("no images (jpg, jpeg, png, bmp, webp) in {}", path.display())]
    NoImages { path: PathBuf },
    #[error("cannot list {}: {message}", path.display())]
    Walk { path: PathBuf, message: String },
    /// An image that cannot be used (it does not decode, is truncated or too large, or the
    /// transforms cannot make it the model's size): `data.skip_bad` skips these.
    #[error("cannot read image {}: {message}", path.display())]
    Image { path: PathBuf, message: String },
    /// A file operation that failed (reading an image file, writing the image cache): never
    /// skipped, whatever `data.skip_bad` says.
    #[error("cannot {operation} {}: {message}", path.display())]
    Io { path: PathBuf, operation: String, message: String },
    /// A test-labels file that does not answer every test image, or not in classes.
    #[error("{}{}: {message}", path.display(), if *line > 0 { format!(" line {line}") } else { String::new() })]
    Labels { path: PathBuf, line: usize, message: String },
    /// Test images that would share a submission id, or have none.
    #[error("{message}")]
    Ids { message: String },
}

impl DataError {
    /// Whether the error is the image's own (skippable), not the machine's.
    pub fn is_bad_image(&self) -> bool {
        matches!(self, DataError::Image { .. })
    }
}
