//! `summary.png`: best validation accuracy (left axis) and parameters (right axis) per
//! variant, the variants in sweep order along the x axis (one category each, so a grid of
//! several keys plots as well as one axis).

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::summary::{Row, Status};
use super::write_atomic;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 520;
const ACC: RGBColor = RGBColor(31, 119, 180);
const PARAMS: RGBColor = RGBColor(255, 127, 14);

/// plotters needs a font to draw text. Its default (font-kit) looks fonts up through the
/// system's fontconfig, which a fresh machine or CI image may lack; the DejaVu Sans file is
/// bundled instead (Bitstream Vera licence, assets/fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            if plotters::style::register_font("sans-serif", style, FONT).is_err() {
                unreachable!("the bundled font is a valid TrueType file");
            }
        }
    });
}

/// Writes `path` (PNG) for `rows`; variants without a result (pending, failed) leave a gap
/// in the accuracy line and are marked in their x label.
pub fn write_png(path: &Path, title: &str, rows: &[Row]) -> anyhow::Result<()> {
    register_font();
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, title, rows).map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        root.present().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(&rgb, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)?;
    Ok(write_atomic(path, &png)?)
}

use image::ImageEncoder as _;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The accuracy axis: the observed range padded, kept inside [0, 1].
fn accuracy_axis(rows: &[Row]) -> (f64, f64) {
    let accs = || rows.iter().filter_map(|r| r.best_val_acc);
    match (accs().reduce(f64::min), accs().reduce(f64::max)) {
        (Some(lo), Some(hi)) => {
            let pad = ((hi - lo) * 0.2).max(0.02);
            ((lo - pad).max(0.0), (hi + pad).min(1.0))
        }
        _ => (0.0, 1.0),
    }
}

fn draw(root: &DrawingArea<BitMapBackend, Shift>, title: &str, rows: &[Row]) -> DrawResult {
    root.fill(&WHITE)?;
    let n = rows.len().max(1) as i32;
    let (lo, hi) = accuracy_axis(rows);
    let max_params = rows.iter().map(|r| r.params).max().unwrap_or(1).max(1) as f64 * 1.15;
    let label = |i: usize| {
        let r = &rows[i];
        match r.status {
            Status::Ok => r.variant.clone(),
            Status::Failed => format!("{} (failed)", r.variant),
            Status::Pending => format!("{} (pending)", r.variant),
        }
    };

    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .right_y_label_area_size(80)
        .build_cartesian_2d((0..n - 1).into_segmented(), lo..hi)?
        .set_secondary_coord((0..n - 1).into_segmented(), 0.0..max_params);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if (*i as usize) < rows.len() => label(*i as usize),
            _ => String::new(),
        })
        .x_desc("variant")
        .y_desc("best validation accuracy")
        .y_label_formatter(&|v| format!("{v:.3}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("parameters")
        .y_label_formatter(&|v| crate::units::thousands(*v as u64))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;

    let params: Vec<(SegmentValue<i32>, f64)> =
        rows.iter().enumerate().map(|(i, r)| (SegmentValue::CenterOf(i as i32), r.params as f64)).collect();
    chart
        .draw_secondary_series(LineSeries::new(params.clone(), PARAMS.stroke_width(2)))?
        .label("parameters (right axis)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PARAMS.stroke_width(2)));
    chart.draw_secondary_series(params.iter().map(|p| Circle::new(p.clone(), 4, PARAMS.filled())))?;

    // One line per run of consecutive results: a failed variant breaks the line.
    let points: Vec<Option<(SegmentValue<i32>, f64)>> =
        rows.iter().enumerate().map(|(i, r)| r.best_val_acc.map(|a| (SegmentValue::CenterOf(i as i32), a))).collect();
    let mut first = true;
    for run in points.split(Option::is_none).filter(|s| !s.is_empty()) {
        let line: Vec<_> = run.iter().flatten().cloned().collect();
        let series = chart.draw_series(LineSeries::new(line, ACC.stroke_width(2)))?;
        if first {
            series
                .label("best validation accuracy (left axis)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ACC.stroke_width(2)));
            first = false;
        }
    }
    chart.draw_series(points.iter().flatten().map(|p| Circle::new(p.clone(), 4, ACC.filled())))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(variant: &str, params: usize, acc: Option<f64>, status: Status) -> Row {
        Row { best_val_acc: acc, status, ..Row::pending(variant, "", None, (params, 0)) }
    }

    /// Counts pixels close to `c` in a decoded PNG.
    fn count(img: &image::RgbImage, c: RGBColor) -> usize {
        img.pixels().filter(|p| p.0.iter().zip([c.0, c.1, c.2]).all(|(a, b)| (*a as i32 - b as i32).abs() < 8)).count()
    }

    #[test]
    fn draws_both_series_and_text_into_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.png");
        let rows = vec![
            row("groups=1", 500_000, Some(0.71), Status::Ok),
            row("groups=4", 200_000, Some(0.74), Status::Ok),
            row("groups=16", 120_000, None, Status::Failed),
            row("groups=64", 100_000, Some(0.73), Status::Ok),
        ];
        write_png(&path, "resnext", &rows).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        // Both lines and their markers are drawn, and text (dark grey/black glyphs) too.
        assert!(count(&img, ACC) > 200, "accuracy series missing");
        assert!(count(&img, PARAMS) > 200, "params series missing");
        assert!(count(&img, BLACK) > 500, "no text or axes");
        // A plot without any result still draws (axes only).
        let empty = vec![row("a", 10, None, Status::Pending)];
        write_png(&path, "pending", &empty).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(count(&img, ACC), 0);
    }
}
