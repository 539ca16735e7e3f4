//! What a run leaves behind: the run folder, metric sinks (CSV, TensorBoard, memory),
//! checkpoints, the submission and the log.

pub mod checkpoint;
pub mod hparams;
pub mod log;
pub mod plot;
pub mod run_dir;
pub mod sink;
pub mod submission;
pub mod summary;
pub mod tensorboard;

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader (or a crash) never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
