//! Evaluation beyond one accuracy: the confusion matrix of a set of labelled predictions, each
//! class's precision, recall and F1, the accuracy with its 95 % interval, written as
//! `<name>_confusion.csv`, `<name>_per_class.csv` and a heat-map `<name>_confusion.png`.

use std::path::Path;

use plotters::prelude::*;

use super::write_atomic;
use crate::stats::Confusion;

/// Writes `<name>_confusion.csv`, `<name>_per_class.csv` and `<name>_confusion.png` into
/// `dir` (created).
pub fn write(c: &Confusion, dir: &Path, name: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| super::io_error("create", dir, e))?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["true \\ predicted".to_string()];
    header.extend(c.classes.iter().cloned());
    w.write_record(&header)?;
    for (class, row) in c.classes.iter().zip(&c.counts) {
        let mut rec = vec![class.clone()];
        rec.extend(row.iter().map(u64::to_string));
        w.write_record(&rec)?;
    }
    write_atomic(&dir.join(format!("{name}_confusion.csv")), &w.into_inner()?)?;
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["class", "precision", "recall", "f1", "support"])?;
    let num = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    for (class, s) in c.classes.iter().zip(c.per_class()) {
        w.write_record([class.clone(), num(s.precision), num(s.recall), num(s.f1), s.support.to_string()])?;
    }
    write_atomic(&dir.join(format!("{name}_per_class.csv")), &w.into_inner()?)?;
    Ok(write_atomic(&dir.join(format!("{name}_confusion.png")), &heatmap_png(c, name)?)?)
}

/// The matrix as a heat-map (PNG bytes): each cell shaded by its share of its true class
/// (recall along the diagonal), with its count.
pub fn heatmap_png(c: &Confusion, title: &str) -> anyhow::Result<Vec<u8>> {
    super::plot::register_font();
    let k = c.classes.len().max(1);
    let cell = (560 / k as u32).clamp(8, 120);
    let (w, h) = ((200 + cell * k as u32).max(660), 100 + cell * k as u32 + 120);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(c, &root, title, cell).map_err(|e| anyhow::anyhow!("drawing the confusion matrix: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("drawing the confusion matrix: {e}"))?;
    }
    super::plot::encode_png(&rgb, w, h)
}

/// A validation image the model got wrong: its file, true and predicted class, and the
/// probability it gave the wrong class.
pub struct Mistake<'a> {
    pub path: &'a Path,
    pub truth: &'a str,
    pub predicted: &'a str,
    pub confidence: f32,
}

/// The most confident mistakes (up to 16, most confident first) as a grid of thumbnails, each
/// captioned with its true and predicted class (PNG bytes); `None` without a mistake.
pub fn mistakes_png(mut mistakes: Vec<Mistake>, max_pixels: u64) -> anyhow::Result<Option<Vec<u8>>> {
    const TILE: u32 = 128;
    const CAPTION: u32 = 34;
    if mistakes.is_empty() {
        return Ok(None);
    }
    mistakes.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    mistakes.truncate(16);
    let cols = (mistakes.len() as f64).sqrt().ceil() as u32;
    let rows = (mistakes.len() as u32).div_ceil(cols);
    let (w, h) = (cols * TILE, rows * (TILE + CAPTION));
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (i, m) in mistakes.iter().enumerate() {
        let img = crate::data::loader::decode(m.path, max_pixels)?;
        let thumb = image::imageops::resize(&img, TILE - 8, TILE - 8, image::imageops::FilterType::Triangle);
        let (x, y) = ((i as u32 % cols) * TILE, (i as u32 / cols) * (TILE + CAPTION));
        image::imageops::overlay(&mut canvas, &thumb, (x + 4) as i64, (y + 4) as i64);
    }
    super::plot::register_font();
    let mut rgb = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        let caption = |i: usize, m: &Mistake| -> Result<(), Box<dyn std::error::Error>> {
            let (x, y) = ((i as u32 % cols * TILE) as i32 + 4, (i as u32 / cols * (TILE + CAPTION) + TILE) as i32);
            root.draw(&Text::new(format!("true: {}", m.truth), (x, y), ("sans-serif", 13)))?;
            let wrong = ("sans-serif", 13).into_font().color(&RGBColor(214, 39, 40));
            root.draw(&Text::new(format!("pred: {} {:.2}", m.predicted, m.confidence), (x, y + 15), wrong))?;
            Ok(())
        };
        for (i, m) in mistakes.iter().enumerate() {
            caption(i, m).map_err(|e| anyhow::anyhow!("drawing the mistakes: {e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("drawing the mistakes: {e}"))?;
    }
    Ok(Some(super::plot::encode_png(&rgb, w, h)?))
}

fn draw(
    c: &Confusion,
    root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    cell: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let k = c.classes.len();
    let root = root.titled(&format!("{title}: {}", c.headline()), ("sans-serif", 15))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .x_label_area_size(90)
        .y_label_area_size(140)
        .build_cartesian_2d((0..k as i32 - 1).into_segmented(), (0..k as i32 - 1).into_segmented())?;
    let name = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => c.classes.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let flipped = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => {
            k.checked_sub(1 + *i as usize).and_then(|j| c.classes.get(j)).cloned().unwrap_or_default()
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
        let support: u64 = c.counts[t].iter().sum();
        for p in 0..k {
            let share = if support == 0 { 0.0 } else { c.counts[t][p] as f64 / support as f64 };
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
                    c.counts[t][p].to_string(),
                    (SegmentValue::CenterOf(p as i32), SegmentValue::CenterOf(y)),
                    ("sans-serif", 14).into_font().color(&ink),
                )))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    #[test]
    fn scores_follow_their_definitions() {
        let classes: Vec<String> = ["cat", "dog", "fox"].map(String::from).into();
        // cat: 3 right, 1 as dog; dog: 2 right, 2 as cat; fox: 1 as dog, none right.
        let pairs = [(0, 0), (0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 0), (1, 0), (2, 1)];
        let e = Confusion::from_pairs(&classes, pairs);
        assert_eq!(e.counts, vec![vec![3, 1, 0], vec![2, 2, 0], vec![0, 1, 0]]);
        assert_eq!((e.correct(), e.total()), (5, 9));
        let s = e.per_class();
        assert_eq!(s[0].precision, Some(3.0 / 5.0));
        assert_eq!(s[0].recall, Some(3.0 / 4.0));
        assert!((s[0].f1.unwrap() - 2.0 * 0.6 * 0.75 / 1.35).abs() < 1e-12);
        assert_eq!((s[2].precision, s[2].recall, s[2].f1, s[2].support), (None, Some(0.0), None, 1));
        assert_eq!(e.accuracy_interval(), stats::wilson(5, 9));
        let dir = tempfile::tempdir().unwrap();
        write(&e, dir.path(), "val").unwrap();
        let csv = std::fs::read_to_string(dir.path().join("val_confusion.csv")).unwrap();
        assert_eq!(csv, "true \\ predicted,cat,dog,fox\ncat,3,1,0\ndog,2,2,0\nfox,0,1,0\n");
        let img = image::open(dir.path().join("val_confusion.png")).unwrap().to_rgb8();
        // The darkest cell (cat, cat: 3 of 4) is drawn.
        assert!(img.pixels().filter(|p| p.0[0] < 80 && p.0[2] > 150).count() > 1000);
    }

    #[test]
    fn mistakes_are_tiled_most_confident_first_with_captions() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<std::path::PathBuf> = (0..5)
            .map(|i| {
                let path = dir.path().join(format!("{i}.png"));
                let colour = if i == 3 { [0, 200, 0] } else { [200, 200, 200] };
                image::RgbImage::from_pixel(20, 10, image::Rgb(colour)).save(&path).unwrap();
                path
            })
            .collect();
        let mistakes: Vec<Mistake> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| Mistake {
                path: p,
                truth: "cat",
                predicted: "dog",
                confidence: if i == 3 { 0.99 } else { 0.6 },
            })
            .collect();
        let png = mistakes_png(mistakes, u64::MAX).unwrap().unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (3 * 128, 2 * (128 + 34)), "5 tiles: 3 columns, 2 rows");
        assert_eq!(img.get_pixel(60, 60).0, [0, 200, 0], "the most confident mistake comes first");
        let red = img.pixels().filter(|p| p.0[0] > 180 && p.0[1] < 90 && p.0[2] < 90).count();
        assert!(red > 100, "the predicted classes are captioned in red");
        assert!(mistakes_png(Vec::new(), u64::MAX).unwrap().is_none());
    }
}
