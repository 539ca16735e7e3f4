//! The run log: each line goes to `log.txt` and to the terminal (above any progress bars).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::train::{Bar, Progress};

/// Writes timestamped lines to a log file and echoes them on stderr.
pub struct RunLog {
    file: Option<Mutex<File>>,
    pub progress: MultiProgress,
}

impl RunLog {
    /// Logs to `path` (created) and to the terminal.
    pub fn create(path: &Path, progress: MultiProgress) -> std::io::Result<Self> {
        let file = File::create(path).map_err(|e| super::io_error("create", path, e))?;
        Ok(Self { file: Some(Mutex::new(file)), progress })
    }

    /// Logs to the end of `path` (created if missing), as a resumed run does.
    pub fn append(path: &Path, progress: MultiProgress) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| super::io_error("open", path, e))?;
        Ok(Self { file: Some(Mutex::new(file)), progress })
    }

    /// Progress bars on stderr: indicatif draws only on a terminal; elsewhere (CI, pipes) the
    /// bars stay hidden.
    pub fn terminal_bars() -> MultiProgress {
        MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
    }

    /// Logs to the terminal only (before a run folder exists, or for `predict`).
    pub fn terminal(progress: MultiProgress) -> Self {
        Self { file: None, progress }
    }

    pub fn info(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        if let Some(f) = &self.file {
            let stamp = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
            let mut f = f.lock().expect("log file poisoned");
            // A full disk must not stop training; the terminal still shows the line.
            let _ = writeln!(f, "{stamp} {msg}");
            let _ = f.flush();
        }
        if self.progress.is_hidden() {
            eprintln!("{msg}");
        } else {
            let _ = self.progress.println(msg);
        }
    }
}

impl Progress for RunLog {
    fn info(&self, line: &str) {
        RunLog::info(self, line);
    }

    fn bar(&self, label: String, len: usize) -> Box<dyn Bar> {
        let pb = self.progress.add(ProgressBar::new(len as u64));
        pb.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
                .expect("static template")
                .progress_chars("=> "),
        );
        pb.set_prefix(label);
        Box::new(pb)
    }
}

impl Bar for ProgressBar {
    fn set_position(&self, pos: usize) {
        ProgressBar::set_position(self, pos as u64);
    }

    fn step(&self, message: Option<String>) {
        if let Some(m) = message {
            self.set_message(m);
        }
        self.inc(1);
    }

    fn finish(&self) {
        self.finish_and_clear();
    }
}
