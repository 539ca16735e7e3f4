//! `summary.png`, the picture of an ablation: on the left, best validation accuracy (mean over
//! a variant's runs, with its 95 % interval as an error bar) against the swept value — a
//! number on the x axis (log2 when the values are powers of two, as group counts are), one line
//! per value of a second swept key; variant names when the values are not numbers — and on the
//! right the same accuracy against each variant's parameters: the trade-off an ablation is
//! about.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::aggregate::Aggregate;
#[cfg(test)]
use super::summary::Status;
use super::write_atomic;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 540;
/// Error bars, in a colour no series takes (the picture test counts it).
const ERRORBAR: RGBColor = RGBColor(214, 39, 40);
/// One colour per line (tab10 without its red).
const SERIES: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// plotters needs a font to draw text. Its default (font-kit) looks fonts up through the
/// system's fontconfig, which a fresh machine or CI image may lack; the DejaVu Sans file is
/// bundled instead (Bitstream Vera licence, assets/fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

pub(super) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            if plotters::style::register_font("sans-serif", style, FONT).is_err() {
                unreachable!("the bundled font is a valid TrueType file");
            }
        }
    });
}

/// Writes `path` (PNG) for the variants `groups`; a variant without a finished run has no
/// point.
pub fn write_png(path: &Path, title: &str, groups: &[Aggregate]) -> anyhow::Result<()> {
    register_font();
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, title, groups).map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        root.present().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    write_rgb_png(path, &rgb, WIDTH, HEIGHT)
}

/// `lr_find.png`: the smoothed loss (and each step's loss, faint) against the learning rate
/// on a log axis, the suggested rate marked.
pub fn lr_find_png(
    path: &Path,
    title: &str,
    points: &[crate::train::lr_find::LrPoint],
    suggested: Option<f64>,
) -> anyhow::Result<()> {
    register_font();
    let (w, h) = (900u32, 540u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_lr_find(&root, title, points, suggested)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        root.present().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    write_rgb_png(path, &rgb, w, h)
}

fn draw_lr_find(
    root: &DrawingArea<BitMapBackend, Shift>,
    title: &str,
    points: &[crate::train::lr_find::LrPoint],
    suggested: Option<f64>,
) -> DrawResult {
    root.fill(&WHITE)?;
    let finite: Vec<_> = points.iter().filter(|p| p.smoothed.is_finite() && p.loss.is_finite()).collect();
    let (lo, hi) = (points.first().map_or(1e-7, |p| p.lr), points.last().map_or(1.0, |p| p.lr).max(1e-30));
    let best = finite.iter().map(|p| p.smoothed).fold(f64::INFINITY, f64::min);
    let first = finite.first().map_or(1.0, |p| p.smoothed);
    // The range the smoothed curve takes before it diverges, with a margin.
    let top = finite.iter().map(|p| p.smoothed).filter(|v| *v <= 4.0 * best).fold(first, f64::max);
    let (y0, y1) = if best.is_finite() {
        (best - 0.1 * (top - best).max(1e-3), top + 0.1 * (top - best).max(1e-3))
    } else {
        (0.0, 1.0)
    };
    let caption = match suggested {
        Some(lr) => format!("{title}: learning-rate range test, suggested {lr:.2e}"),
        None => format!("{title}: learning-rate range test (no suggestion: too few steps)"),
    };
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi.max(lo * 1.0001)).log_scale(), y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("learning rate")
        .y_desc("training loss")
        .x_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    let clip = |v: f64| v.clamp(y0, y1);
    chart.draw_series(LineSeries::new(finite.iter().map(|p| (p.lr, clip(p.loss))), SERIES[0].mix(0.25)))?;
    chart.draw_series(LineSeries::new(finite.iter().map(|p| (p.lr, clip(p.smoothed))), SERIES[0].stroke_width(2)))?;
    if let Some(lr) = suggested {
        chart.draw_series(LineSeries::new([(lr, y0), (lr, y1)], ERRORBAR.stroke_width(2)))?;
    }
    Ok(())
}

/// Encodes an RGB buffer of `width` x `height` as a PNG at `path` (atomically).
pub(super) fn write_rgb_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> anyhow::Result<()> {
    Ok(write_atomic(path, &encode_png(rgb, width, height)?)?)
}

/// An RGB buffer of `width` x `height` as PNG bytes.
pub(super) fn encode_png(rgb: &[u8], width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(rgb, width, height, image::ExtendedColorType::Rgb8)?;
    Ok(png)
}

use image::ImageEncoder as _;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// How the left panel's x axis shows the variants.
#[derive(Debug, Clone, PartialEq)]
pub enum XAxis {
    /// Each variant's value of `key`, a number; `log2` when every value is a power of two.
    Numeric { key: String, log2: bool },
    /// One slot per distinct label, in order of appearance.
    Categorical { key: Option<String> },
}

/// A variant's swept values, `key=value;...` parsed.
fn values(g: &Aggregate) -> Vec<(&str, &str)> {
    g.values.split(';').filter_map(|kv| kv.split_once('=')).collect()
}

/// The x axis for `groups`: the first swept key, as a number when all its values are numbers,
/// else its values (or the variant names, without a sweep) as categories. A second key, if
/// any, gives the lines.
pub fn x_axis(groups: &[Aggregate]) -> XAxis {
    let keys: Vec<&str> = groups.first().map(|g| values(g).iter().map(|(k, _)| *k).collect()).unwrap_or_default();
    let same_keys = groups.iter().all(|g| values(g).iter().map(|(k, _)| *k).eq(keys.iter().copied()));
    let Some(key) = keys.first().filter(|_| same_keys && keys.len() <= 2) else {
        return XAxis::Categorical { key: None };
    };
    let numbers: Option<Vec<f64>> =
        groups.iter().map(|g| values(g)[0].1.parse::<f64>().ok().filter(|v| v.is_finite())).collect();
    match numbers {
        Some(xs) => {
            let log2 = xs.iter().all(|&x| x >= 1.0 && x.log2().fract() == 0.0) && xs.iter().any(|&x| x >= 4.0);
            XAxis::Numeric { key: key.to_string(), log2 }
        }
        None => XAxis::Categorical { key: Some(key.to_string()) },
    }
}

/// The accuracy axis: every mean and interval end, padded.
fn accuracy_range(groups: &[Aggregate]) -> (f64, f64) {
    let ends = groups.iter().filter_map(|g| point(g, 0.0)).flat_map(|(_, mean, ci)| {
        let (lo, hi) = ci.unwrap_or((mean, mean));
        [lo, hi]
    });
    match ends.fold(None, |acc: Option<(f64, f64)>, v| Some(acc.map_or((v, v), |(a, b)| (a.min(v), b.max(v))))) {
        Some((lo, hi)) => {
            let pad = ((hi - lo) * 0.15).max(0.02);
            ((lo - pad).max(0.0), (hi + pad).min(1.02))
        }
        None => (0.0, 1.0),
    }
}

/// A short label for an axis key: `model.params.groups` -> `groups`.
fn short(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

fn draw(root: &DrawingArea<BitMapBackend, Shift>, title: &str, groups: &[Aggregate]) -> DrawResult {
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(WIDTH * 7 / 12);
    let acc = accuracy_range(groups);
    draw_swept(&left, groups, acc)?;
    draw_tradeoff(&right, groups, acc)?;
    Ok(())
}

/// One point per variant with its error bar, `(x, mean, interval)`.
type Point = (f64, f64, Option<(f64, f64)>);

/// The variant's accuracy at `x`; its interval clipped to [0, 1] (Student's t knows nothing of
/// the bounds of an accuracy).
fn point(g: &Aggregate, x: f64) -> Option<Point> {
    g.metric("best_val_acc").map(|e| (x, e.mean, e.ci.map(|(l, h)| (l.max(0.0), h.min(1.0)))))
}

/// Accuracy against the swept value, one line per value of the second key.
fn draw_swept(area: &DrawingArea<BitMapBackend, Shift>, groups: &[Aggregate], (lo, hi): (f64, f64)) -> DrawResult {
    let axis = x_axis(groups);
    // (line name, points) in order of appearance; x as plotted, and the tick labels.
    let mut lines: Vec<(String, Vec<Point>)> = Vec::new();
    let mut ticks: Vec<(f64, String)> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let v = values(g);
        let (x, label) = match &axis {
            XAxis::Numeric { log2, .. } => {
                let x: f64 = v[0].1.parse().unwrap_or(0.0);
                (if *log2 { x.log2() } else { x }, v[0].1.to_string())
            }
            XAxis::Categorical { key: Some(_) } => {
                let label = v[0].1.to_string();
                let slot = ticks.iter().position(|(_, l)| *l == label).unwrap_or(ticks.len());
                (slot as f64, label)
            }
            XAxis::Categorical { key: None } => (i as f64, g.variant.clone()),
        };
        if !ticks.iter().any(|(_, l)| *l == label) {
            ticks.push((x, label));
        }
        let line = v.get(1).map_or(String::new(), |(k, val)| format!("{}={val}", short(k)));
        let at = lines.iter().position(|(n, _)| *n == line).unwrap_or_else(|| {
            lines.push((line, Vec::new()));
            lines.len() - 1
        });
        lines[at].1.extend(point(g, x));
    }
    let xs = || ticks.iter().map(|(x, _)| *x);
    let (x0, x1) = (xs().fold(f64::INFINITY, f64::min), xs().fold(f64::NEG_INFINITY, f64::max));
    let pad = if x1 > x0 { (x1 - x0) * 0.08 } else { 0.5 };
    let x_desc = match &axis {
        XAxis::Numeric { key, log2: true } => format!("{} (log2 scale)", short(key)),
        XAxis::Numeric { key, .. } | XAxis::Categorical { key: Some(key) } => short(key).to_string(),
        XAxis::Categorical { key: None } => "variant".into(),
    };
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), lo..hi)?;
    let label_at = |x: &f64| ticks.iter().find(|(t, _)| (t - x).abs() < 1e-9).map_or(String::new(), |(_, l)| l.clone());
    let numeric = matches!(axis, XAxis::Numeric { log2: false, .. });
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(if numeric { 8 } else { ticks.len().max(2) * 8 })
        .x_label_formatter(&|x| if numeric { trim(*x) } else { label_at(x) })
        .x_desc(x_desc)
        .y_desc("best validation accuracy (mean, 95 % CI)")
        .y_label_formatter(&|v| format!("{v:.3}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for (k, (name, points)) in lines.iter_mut().enumerate() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = SERIES[k % SERIES.len()];
        let series = chart.draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))?;
        if !name.is_empty() {
            series
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        draw_points(&mut chart, points, color)?;
    }
    if lines.iter().any(|(n, _)| !n.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    Ok(())
}

/// Markers and error bars.
fn draw_points<X: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<BitMapBackend, Cartesian2d<X, RangedCoordf64>>,
    points: &[Point],
    color: RGBColor,
) -> DrawResult {
    chart.draw_series(points.iter().filter_map(|&(x, _, ci)| {
        ci.map(|(l, h)| ErrorBar::new_vertical(x, l, (l + h) / 2.0, h, ERRORBAR.stroke_width(2), 10))
    }))?;
    chart.draw_series(points.iter().map(|&(x, y, _)| Circle::new((x, y), 5, color.filled())))?;
    Ok(())
}

/// A number without trailing zeros: `0.0003`, `64`.
fn trim(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Accuracy against parameters, one point per variant, named.
fn draw_tradeoff(area: &DrawingArea<BitMapBackend, Shift>, groups: &[Aggregate], (lo, hi): (f64, f64)) -> DrawResult {
    let params = || groups.iter().map(|g| g.params.max(1) as f64);
    let (p0, p1) = (params().fold(f64::INFINITY, f64::min), params().fold(f64::NEG_INFINITY, f64::max));
    let (p0, p1) = if p0.is_finite() { (p0 / 1.5, p1 * 1.5) } else { (1.0, 10.0) };
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((p0..p1).log_scale(), lo..hi)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|v| crate::units::thousands(*v as u64))
        .x_desc("parameters (log scale)")
        .y_desc("best validation accuracy")
        .y_label_formatter(&|v| format!("{v:.3}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    let points: Vec<Point> = groups.iter().filter_map(|g| point(g, g.params.max(1) as f64)).collect();
    draw_points(&mut chart, &points, SERIES[0])?;
    chart.draw_series(groups.iter().filter_map(|g| {
        let (x, y, _) = point(g, g.params.max(1) as f64)?;
        Some(Text::new(g.variant.clone(), (x, y), ("sans-serif", 13)))
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Estimate;

    fn group(variant: &str, values: &str, params: usize, acc: Option<(f64, Option<(f64, f64)>)>) -> Aggregate {
        let estimate = acc.map(|(mean, ci)| Estimate { n: if ci.is_some() { 3 } else { 1 }, mean, sd: None, ci });
        let mut metrics = vec![None; crate::output::aggregate::METRICS.len()];
        metrics[0] = estimate;
        Aggregate {
            variant: variant.into(),
            values: values.into(),
            params,
            macs: 0,
            runs: 1,
            of: 1,
            status: if acc.is_some() { Status::Ok } else { Status::Failed },
            error: None,
            stopped_early: 0,
            metrics,
            versus: None,
        }
    }

    /// Counts pixels close to `c` in a decoded PNG.
    fn count(img: &image::RgbImage, c: RGBColor) -> usize {
        img.pixels().filter(|p| p.0.iter().zip([c.0, c.1, c.2]).all(|(a, b)| (*a as i32 - b as i32).abs() < 8)).count()
    }

    #[test]
    fn the_x_axis_is_numeric_log2_or_categorical() {
        let g = |v: &str| group("x", v, 1, None);
        let groups = |vs: &[&str]| vs.iter().map(|v| g(v)).collect::<Vec<_>>();
        let key = "model.params.groups".to_string();
        assert_eq!(
            x_axis(&groups(&["model.params.groups=1", "model.params.groups=4", "model.params.groups=64"])),
            XAxis::Numeric { key: key.clone(), log2: true }
        );
        assert_eq!(
            x_axis(&groups(&["model.params.groups=1", "model.params.groups=3"])),
            XAxis::Numeric { key: key.clone(), log2: false }
        );
        assert_eq!(
            x_axis(&groups(&["optimizer.kind=adam", "optimizer.kind=sgd"])),
            XAxis::Categorical { key: Some("optimizer.kind".into()) }
        );
        assert_eq!(x_axis(&groups(&["", ""])), XAxis::Categorical { key: None });
        // Two keys: the first on x, the second as lines.
        assert_eq!(
            x_axis(&groups(&["a.g=2;b.lr=0.1", "a.g=8;b.lr=0.1", "a.g=2;b.lr=0.01"])),
            XAxis::Numeric { key: "a.g".into(), log2: true }
        );
    }

    #[test]
    fn draws_means_error_bars_and_the_tradeoff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.png");
        let ci = |m: f64| Some((m, Some((m - 0.03, m + 0.03))));
        let groups = vec![
            group("groups=1", "model.params.groups=1", 500_000, ci(0.71)),
            group("groups=4", "model.params.groups=4", 200_000, ci(0.74)),
            group("groups=16", "model.params.groups=16", 120_000, None),
            group("groups=64", "model.params.groups=64", 100_000, ci(0.73)),
        ];
        write_png(&path, "resnext", &groups).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        assert!(count(&img, SERIES[0]) > 300, "means and lines missing");
        let bars = count(&img, ERRORBAR);
        // 3 variants x 2 panels, each bar ~0.06 of the axis high and 10 px wide.
        assert!(bars > 6 * 40, "error bars missing: {bars} pixels");
        assert!(count(&img, BLACK) > 800, "no text or axes");
        // Single runs: points, no error bars.
        let single: Vec<Aggregate> = groups
            .iter()
            .map(|g| {
                let mut g = g.clone();
                g.metrics[0] = g.metrics[0].map(|e| Estimate { ci: None, ..e });
                g
            })
            .collect();
        write_png(&path, "single", &single).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(count(&img, ERRORBAR), 0);
        assert!(count(&img, SERIES[0]) > 200);
        // A plot without any result still draws (axes only).
        write_png(&path, "pending", &[group("a", "", 10, None)]).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(count(&img, SERIES[0]), 0);
    }
}
