//! What a run leaves behind: the run folder, metric sinks (CSV, TensorBoard, memory),
//! checkpoints, the submission and the log.

pub mod aggregate;
pub mod checkpoint;
pub mod crash;
pub mod evaluation;
pub mod hparams;
pub mod kernel_plan;
pub mod log;
pub mod plot;
pub mod predictions;
pub mod report;
pub mod run_folder;
pub mod sink;
pub mod submission;
pub mod summary;
pub mod tensorboard;

use std::io::Write;
use std::path::Path;

/// An I/O error that says what was done to which file (`cannot write runs/x/summary.csv: No
/// space left on device`), keeping the error's kind.
pub fn io_error(operation: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("cannot {operation} {}: {e}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader (or a crash) never sees a half-written file. An error names `path` (not the
/// temporary file).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_unnamed(path, bytes).map_err(|e| io_error("write", path, e))
}

fn write_atomic_unnamed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    // tempfile makes private (0600) files; a run's outputs are ordinary files (0666 less umask).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    #[test]
    fn atomic_writes_make_ordinary_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        super::write_atomic(&path, b"x").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // Readable by others unless the umask says otherwise (CI's and ours: 022).
        assert_eq!(mode & 0o600, 0o600);
        assert_ne!(mode, 0o600, "private temp-file mode leaked into the output");
    }
}
