//! Evaluation beyond one accuracy: the confusion matrix of a set of labelled predictions, each
//! class's precision, recall and F1, the accuracy with its 95 % interval, written as
//! `<name>_confusion.csv`, `<name>_per_class.csv` and a heat-map `<name>_confusion.png`.

use std::path::Path;

use plotters::prelude::*;

use super::write_atomic;
use crate::stats;

/// Counts of (true class, predicted class) over a set of images.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub classes: Vec<String>,
    /// `confusion[t][p]`: images of class `t` predicted as `p`.
    pub confusion: Vec<Vec<u64>>,
}

/// One class's scores; `None` where the denominator is zero (no image predicted as, or of,
/// the class), as scikit-learn reports them with `zero_division` left undecided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScore {
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Images of the class.
    pub support: u64,
}

impl Evaluation {
    /// The matrix of `(label, predicted)` pairs.
    pub fn from_pairs(classes: &[String], pairs: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let k = classes.len();
        let mut confusion = vec![vec![0u64; k]; k];
        for (t, p) in pairs {
            confusion[t][p] += 1;
        }
        Self { classes: classes.to_vec(), confusion }
    }

    pub fn total(&self) -> u64 {
        self.confusion.iter().flatten().sum()
    }

    pub fn correct(&self) -> u64 {
        (0..self.classes.len()).map(|i| self.confusion[i][i]).sum()
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.total() > 0).then(|| self.correct() as f64 / self.total() as f64)
    }

    /// The accuracy's 95 % Wilson score interval (see [`stats::wilson`]).
    pub fn accuracy_interval(&self) -> Option<(f64, f64)> {
        stats::wilson(self.correct(), self.total())
    }

    pub fn per_class(&self) -> Vec<ClassScore> {
        let k = self.classes.len();
        (0..k)
            .map(|c| {
                let tp = self.confusion[c][c] as f64;
                let predicted: u64 = (0..k).map(|t| self.confusion[t][c]).sum();
                let support: u64 = self.confusion[c].iter().sum();
                let precision = (predicted > 0).then(|| tp / predicted as f64);
                let recall = (support > 0).then(|| tp / support as f64);
                let f1 = match (precision, recall) {
                    (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                    (Some(_), Some(_)) => Some(0.0),
                    _ => None,
                };
                ClassScore { precision, recall, f1, support }
            })
            .collect()
    }

    /// The mean F1 over the classes that have one.
    pub fn macro_f1(&self) -> Option<f64> {
        let f1: Vec<f64> = self.per_class().iter().filter_map(|s| s.f1).collect();
        (!f1.is_empty()).then(|| f1.iter().sum::<f64>() / f1.len() as f64)
    }

    /// One line: `accuracy 0.8350 [0.7770, 0.8800] on 200 images, macro F1 0.8342`.
    pub fn headline(&self) -> String {
        let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        let interval = self.accuracy_interval().map_or(String::new(), |(l, h)| format!(" [{l:.4}, {h:.4}]"));
        format!(
            "accuracy {}{interval} on {} images, macro F1 {}",
            num(self.accuracy()),
            self.total(),
            num(self.macro_f1())
        )
    }

    /// Each class's scores as a markdown table.
    pub fn per_class_table(&self) -> String {
        let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        let mut s = String::from("| class | precision | recall | F1 | images |\n|---|---:|---:|---:|---:|\n");
        for (class, c) in self.classes.iter().zip(self.per_class()) {
            s.push_str(&format!(
                "| {class} | {} | {} | {} | {} |\n",
                num(c.precision),
                num(c.recall),
                num(c.f1),
                c.support
            ));
        }
        s
    }

    /// Writes `<name>_confusion.csv`, `<name>_per_class.csv` and `<name>_confusion.png` into
    /// `dir` (created).
    pub fn write(&self, dir: &Path, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| super::io_error("create", dir, e))?;
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header = vec!["true \\ predicted".to_string()];
        header.extend(self.classes.iter().cloned());
        w.write_record(&header)?;
        for (class, row) in self.classes.iter().zip(&self.confusion) {
            let mut rec = vec![class.clone()];
            rec.extend(row.iter().map(u64::to_string));
            w.write_record(&rec)?;
        }
        write_atomic(&dir.join(format!("{name}_confusion.csv")), &w.into_inner()?)?;
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["class", "precision", "recall", "f1", "support"])?;
        let num = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        for (class, s) in self.classes.iter().zip(self.per_class()) {
            w.write_record([class.clone(), num(s.precision), num(s.recall), num(s.f1), s.support.to_string()])?;
        }
        write_atomic(&dir.join(format!("{name}_per_class.csv")), &w.into_inner()?)?;
        self.heatmap(&dir.join(format!("{name}_confusion.png")), name)
    }

    /// The matrix as a heat-map: each cell shaded by its share of its true class (recall along
    /// the diagonal), with its count.
    fn heatmap(&self, path: &Path, title: &str) -> anyhow::Result<()> {
        super::plot::register_font();
        let k = self.classes.len().max(1);
        let cell = (560 / k as u32).clamp(8, 120);
        let (w, h) = (160 + cell * k as u32 + 40, 100 + cell * k as u32 + 120);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root, title, cell).map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
            root.present().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        }
        super::plot::write_rgb_png(path, &rgb, w, h)
    }

    fn draw(
        &self,
        root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
        title: &str,
        cell: u32,
    ) -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let k = self.classes.len();
        let root = root.titled(&format!("{title}: {}", self.headline()), ("sans-serif", 16))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(90)
            .y_label_area_size(140)
            .build_cartesian_2d((0..k as i32).into_segmented(), (0..k as i32).into_segmented())?;
        let name = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => self.classes.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        let flipped = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => {
                k.checked_sub(1 + *i as usize).and_then(|j| self.classes.get(j)).cloned().unwrap_or_default()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(k)
            .y_labels(k)
            .x_label_formatter(&name)
            .y_label_formatter(&flipped)
            .x_desc("predicted")
            .y_desc("true")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        for t in 0..k {
            let support: u64 = self.confusion[t].iter().sum();
            for p in 0..k {
                let share = if support == 0 { 0.0 } else { self.confusion[t][p] as f64 / support as f64 };
                let shade = |c: u8| (255.0 - share * (255.0 - c as f64)) as u8;
                let color = RGBColor(shade(8), shade(81), shade(156));
                let y = (k - 1 - t) as i32;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(p as i32), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(p as i32 + 1), SegmentValue::Exact(y + 1)),
                    ],
                    color.filled(),
                )))?;
                if cell >= 24 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    chart.draw_series(std::iter::once(Text::new(
                        self.confusion[t][p].to_string(),
                        (SegmentValue::CenterOf(p as i32), SegmentValue::CenterOf(y)),
                        ("sans-serif", 14).into_font().color(&ink),
                    )))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_their_definitions() {
        let classes: Vec<String> = ["cat", "dog", "fox"].map(String::from).into();
        // cat: 3 right, 1 as dog; dog: 2 right, 2 as cat; fox: 1 as dog, none right.
        let pairs = [(0, 0), (0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 0), (1, 0), (2, 1)];
        let e = Evaluation::from_pairs(&classes, pairs);
        assert_eq!(e.confusion, vec![vec![3, 1, 0], vec![2, 2, 0], vec![0, 1, 0]]);
        assert_eq!((e.correct(), e.total()), (5, 9));
        let s = e.per_class();
        assert_eq!(s[0].precision, Some(3.0 / 5.0));
        assert_eq!(s[0].recall, Some(3.0 / 4.0));
        assert!((s[0].f1.unwrap() - 2.0 * 0.6 * 0.75 / 1.35).abs() < 1e-12);
        assert_eq!((s[2].precision, s[2].recall, s[2].f1, s[2].support), (None, Some(0.0), None, 1));
        assert_eq!(e.accuracy_interval(), stats::wilson(5, 9));
        let dir = tempfile::tempdir().unwrap();
        e.write(dir.path(), "val").unwrap();
        let csv = std::fs::read_to_string(dir.path().join("val_confusion.csv")).unwrap();
        assert_eq!(csv, "true \\ predicted,cat,dog,fox\ncat,3,1,0\ndog,2,2,0\nfox,0,1,0\n");
        let img = image::open(dir.path().join("val_confusion.png")).unwrap().to_rgb8();
        // The darkest cell (cat, cat: 3 of 4) is drawn.
        assert!(img.pixels().filter(|p| p.0[0] < 80 && p.0[2] > 150).count() > 1000);
    }
}
