//! Data: image-folder discovery, transforms, and batches decoded ahead of the trainer.

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
    #[error("cannot read image {}: {message}", path.display())]
    Image { path: PathBuf, message: String },
}
