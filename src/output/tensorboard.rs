//! TensorBoard: scalars written with tensorboard-rs, and a reader of event files (TFRecord
//! framing with both CRCs checked) for tests and tools.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use protobuf::Message;
use tensorboard_rs::masked_crc32c::masked_crc32c;
use tensorboard_rs::summary::scalar;
use tensorboard_rs::summary_writer::FileWriter;

use crate::train::{EpochMetrics, MetricSink};

/// Scalars per epoch: `train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/macro_f1`,
/// `val/top5_acc` (more than 5 classes), `val/precision/<class>`, `val/recall/<class>`,
/// `val/f1/<class>`, `lr`, `images_per_sec`; with a
/// session, the HParams session start and end and `best/val_acc` at the end.
///
/// One writer per folder: tensorboard-rs names files by the second and the pid, so two writers
/// opened on one folder in the same second would write the same file.
pub struct TensorBoardSink {
    writer: FileWriter,
    /// Class names, for the per-class scalars.
    classes: Vec<String>,
    session: bool,
    best_val_acc: Option<f64>,
    last_epoch: usize,
}

impl TensorBoardSink {
    pub fn create(dir: &Path) -> Self {
        Self { writer: FileWriter::new(dir), classes: Vec::new(), session: false, best_val_acc: None, last_epoch: 0 }
    }

    /// A sink that is also an HParams session with these values (`group`: the variant), of a
    /// model of `classes`.
    pub fn with_session(dir: &Path, hparams: &[(String, toml::Value)], group: &str, classes: &[String]) -> Self {
        let mut sink = Self::create(dir);
        sink.classes = classes.to_vec();
        sink.writer.add_summary(super::hparams::session_start(hparams, group, super::hparams::now_secs()), 0);
        sink.writer.flush();
        sink.session = true;
        sink
    }

    /// Continues a run that recorded `history` before: TensorBoard drops the points of epochs
    /// after it from older event files (a `SessionLog.START` at the next epoch purges every
    /// later step), and `best/val_acc` counts the earlier epochs.
    pub fn continue_after(&mut self, history: &[EpochMetrics]) {
        let mut start = tensorboard_proto::event::Event::new();
        let mut log = tensorboard_proto::event::SessionLog::new();
        log.set_status(tensorboard_proto::event::SessionLog_SessionStatus::START);
        start.set_session_log(log);
        self.writer.add_event(&start, history.len() + 1);
        self.writer.flush();
        self.best_val_acc = history.iter().filter_map(|m| m.val_acc).reduce(f64::max);
        self.last_epoch = history.len();
    }

    /// Writes a summary into this sink's event file (the root's HParams experiment).
    pub fn add_summary(&mut self, summary: tensorboard_proto::summary::Summary) {
        self.writer.add_summary(summary, 0);
        self.writer.flush();
    }
}

impl MetricSink for TensorBoardSink {
    fn record(&mut self, m: &EpochMetrics) -> anyhow::Result<()> {
        let mut scalars = vec![
            ("train/loss", m.train_loss),
            ("train/acc", m.train_acc),
            ("lr", m.lr),
            ("images_per_sec", m.images_per_sec),
        ];
        scalars.extend(m.val_loss.map(|v| ("val/loss", v)));
        scalars.extend(m.val_acc.map(|v| ("val/acc", v)));
        scalars.extend(m.val_macro_f1.map(|v| ("val/macro_f1", v)));
        scalars.extend(m.val_top5_acc.map(|v| ("val/top5_acc", v)));
        for (tag, v) in scalars {
            self.writer.add_summary(scalar(tag, v as f32), m.epoch);
        }
        for (class, score) in self.classes.iter().zip(&m.val_classes) {
            for (name, value) in [("precision", score.precision), ("recall", score.recall), ("f1", score.f1)] {
                if let Some(v) = value {
                    self.writer.add_summary(scalar(&format!("val/{name}/{class}"), v as f32), m.epoch);
                }
            }
        }
        self.writer.flush();
        self.best_val_acc = self.best_val_acc.into_iter().chain(m.val_acc).reduce(f64::max);
        self.last_epoch = m.epoch;
        Ok(())
    }

    fn image(&mut self, tag: &str, png: &[u8], epoch: usize) -> anyhow::Result<()> {
        let size = image::ImageReader::new(std::io::Cursor::new(png)).with_guessed_format()?.into_dimensions()?;
        let mut picture = tensorboard_proto::summary::Summary_Image::new();
        picture.set_width(size.0 as i32);
        picture.set_height(size.1 as i32);
        picture.set_colorspace(3);
        picture.set_encoded_image_string(png.to_vec());
        let mut value = tensorboard_proto::summary::Summary_Value::new();
        value.set_tag(tag.to_string());
        value.set_image(picture);
        let mut summary = tensorboard_proto::summary::Summary::new();
        summary.mut_value().push(value);
        self.writer.add_summary(summary, epoch);
        self.writer.flush();
        Ok(())
    }

    fn finish(&mut self, ok: bool) -> anyhow::Result<()> {
        if let Some(best) = self.best_val_acc {
            self.writer.add_summary(scalar("best/val_acc", best as f32), self.last_epoch);
        }
        if self.session {
            self.writer.add_summary(super::hparams::session_end(ok, super::hparams::now_secs()), self.last_epoch);
        }
        self.writer.flush();
        Ok(())
    }
}

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub tag: String,
    pub step: i64,
    pub value: f32,
}

/// The event files in `dir` (not recursive).
pub fn event_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("events.out.tfevents.")))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every scalar summary of one event file, checking each record's length and data CRCs.
pub fn read_scalars(path: &Path) -> anyhow::Result<Vec<Scalar>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        if rest.len() < 12 {
            bail!("{}: truncated record header", path.display());
        }
        let len_bytes = &rest[..8];
        let len = u64::from_le_bytes(len_bytes.try_into()?) as usize;
        let len_crc = u32::from_le_bytes(rest[8..12].try_into()?);
        if masked_crc32c(len_bytes) != len_crc {
            bail!("{}: bad length CRC", path.display());
        }
        if rest.len() < 12 + len + 4 {
            bail!("{}: truncated record", path.display());
        }
        let data = &rest[12..12 + len];
        let data_crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into()?);
        if masked_crc32c(data) != data_crc {
            bail!("{}: bad data CRC", path.display());
        }
        let event = tensorboard_proto::event::Event::parse_from_bytes(data)?;
        if event.has_summary() {
            for v in event.get_summary().get_value() {
                if v.has_simple_value() {
                    out.push(Scalar {
                        tag: v.get_tag().to_string(),
                        step: event.get_step(),
                        value: v.get_simple_value(),
                    });
                }
            }
        }
        rest = &rest[16 + len..];
    }
    Ok(out)
}
