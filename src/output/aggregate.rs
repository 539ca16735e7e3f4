//! The summary proper: a run's rows (one per run: a variant, or each repeat of it) grouped by
//! variant into [`Aggregate`]s — n, mean, standard deviation and 95 % interval of each metric —
//! and each variant compared with the baseline on best validation accuracy. `summary.csv` holds
//! one line per variant; `runs.csv` keeps the rows.

use std::collections::BTreeMap;

use super::summary::{Row, Status};
use crate::stats::{self, Comparison, Estimate, Test};
use crate::units::thousands;

/// A run's value of one metric.
type Metric = fn(&Row) -> Option<f64>;

/// The metrics aggregated over a variant's runs, by column name.
pub const METRICS: [(&str, Metric); 7] = [
    ("best_val_acc", |r| r.best_val_acc),
    ("final_val_acc", |r| r.final_val_acc),
    ("best_val_loss", |r| r.best_val_loss),
    ("final_val_loss", |r| r.final_val_loss),
    ("test_acc", |r| r.test_acc),
    ("images_per_sec", |r| r.images_per_sec),
    ("seconds", |r| r.seconds),
];

/// One variant over its runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The variant's folder (without `/r<k>`).
    pub variant: String,
    pub values: String,
    pub params: usize,
    pub macs: u64,
    /// Runs that trained to the end, of `of`.
    pub runs: usize,
    pub of: usize,
    /// `ok` when every run is, else `failed` when one failed, else `pending`.
    pub status: Status,
    /// The first failed run's error, with its folder.
    pub error: Option<String>,
    /// Finished runs that early stopping ended before their last epoch.
    pub stopped_early: usize,
    /// One estimate per [`METRICS`] entry (none when no run has the value).
    pub metrics: Vec<Option<Estimate>>,
    /// The baseline variant this one is compared with, and how.
    pub versus: Option<(String, Comparison)>,
}

impl Aggregate {
    pub fn metric(&self, name: &str) -> Option<Estimate> {
        METRICS.iter().position(|(n, _)| *n == name).and_then(|i| self.metrics[i])
    }
}

/// Groups `rows` by variant (in order of first appearance) and compares each variant with
/// the baseline: the group whose rows are marked `baseline`, else the first. Repeats are
/// compared by a paired t-test over the repeats both finished; single runs by `mcnemar(variant,
/// baseline)` (the exact test on their validation predictions) when it can tell.
pub fn aggregate(rows: &[Row], mcnemar: impl Fn(&Row, &Row) -> Option<Comparison>) -> Vec<Aggregate> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        if !groups.contains_key(r.group()) {
            order.push(r.group());
        }
        groups.entry(r.group()).or_default().push(r);
    }
    let baseline = rows.iter().find(|r| r.baseline).map_or(order.first().copied(), |r| Some(r.group()));
    order
        .iter()
        .map(|&name| {
            let runs = &groups[name];
            let ok: Vec<&Row> = runs.iter().copied().filter(|r| r.status == Status::Ok).collect();
            let failed = runs.iter().find(|r| r.status == Status::Failed);
            let status = if failed.is_some() {
                Status::Failed
            } else if ok.len() < runs.len() {
                Status::Pending
            } else {
                Status::Ok
            };
            let versus = baseline
                .filter(|b| *b != name)
                .and_then(|b| compare(&ok, &groups[b], &mcnemar).map(|c| (b.to_string(), c)));
            Aggregate {
                variant: name.to_string(),
                values: runs[0].values.clone(),
                params: runs[0].params,
                macs: runs[0].macs,
                runs: ok.len(),
                of: runs.len(),
                status,
                error: failed.and_then(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.variant))),
                stopped_early: ok.iter().filter(|r| r.stopped_early.is_some()).count(),
                metrics: METRICS.iter().map(|(name, f)| metric(name, *f, &ok)).collect(),
                versus,
            }
        })
        .collect()
}

/// One metric over the finished runs `ok`. A single run's test accuracy gets the Wilson
/// interval of its images (there is no spread over runs to give one).
fn metric(name: &str, f: Metric, ok: &[&Row]) -> Option<Estimate> {
    let e = stats::estimate(&ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())?;
    match (name, ok) {
        ("test_acc", [run]) => {
            let n = run.test_images?;
            Some(Estimate { ci: stats::wilson((e.mean * n as f64).round() as u64, n), ..e })
        }
        _ => Some(e),
    }
}

/// `variant`'s finished runs against `baseline`'s, on best validation accuracy.
fn compare(
    variant: &[&Row],
    baseline: &[&Row],
    mcnemar: &impl Fn(&Row, &Row) -> Option<Comparison>,
) -> Option<Comparison> {
    let ok = |r: &&&Row| r.status == Status::Ok && r.best_val_acc.is_some();
    if let ([v], [b]) = (variant, baseline)
        && v.repeat.is_none()
    {
        return if ok(&v) && ok(&b) { mcnemar(v, b) } else { None };
    }
    // Repeat k of each: the same seed, so the pair differs only in the variant.
    let pairs: Vec<(f64, f64)> = variant
        .iter()
        .filter(ok)
        .filter_map(|v| {
            baseline
                .iter()
                .filter(ok)
                .find(|b| b.repeat == v.repeat)
                .and_then(|b| Some((v.best_val_acc?, b.best_val_acc?)))
        })
        .collect();
    let (v, b): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    stats::paired_t(&v, &b)
}

/// `mean ± half-width` of an estimate's interval (the mean alone for one run).
fn cell(e: Option<Estimate>, digits: usize) -> String {
    match e {
        None => "-".into(),
        Some(Estimate { mean, ci: Some((lo, hi)), .. }) => format!("{mean:.digits$} ± {:.digits$}", (hi - lo) / 2.0),
        Some(Estimate { mean, .. }) => format!("{mean:.digits$}"),
    }
}

/// A comparison in words: "+1.5 points [−0.6, +3.6], p = 0.16 (paired t-test over 3
/// repeats): not significant at 5 %".
pub fn sentence(c: &Comparison) -> String {
    let points = |x: f64| format!("{:+.1}", 100.0 * x).replace('-', "−");
    let interval = c.ci.map_or(String::new(), |(lo, hi)| format!(" [{}, {}]", points(lo), points(hi)));
    let how = match c.test {
        Test::PairedT => format!("paired t-test over {} repeats", c.n),
        Test::McNemar => format!("exact McNemar test on {} validation images", c.n),
    };
    match c.p {
        Some(p) => {
            let verdict = if p < 0.05 { "significant at 5 %" } else { "not significant at 5 %" };
            let p = if p < 0.001 { "p < 0.001".to_string() } else { format!("p = {p:.3}") };
            format!("{} points{interval}, {p} ({how}): {verdict}", points(c.diff))
        }
        None => format!("{} points ({how}; too few to test)", points(c.diff)),
    }
}

/// The aggregated table and the comparisons, as markdown.
pub fn markdown(title: &str, groups: &[Aggregate]) -> String {
    let spread = groups.iter().any(|g| g.of > 1);
    let test = groups.iter().any(|g| g.metric("test_acc").is_some());
    let mut s = format!("# {title}\n\n");
    if spread {
        s.push_str("Mean ± half-width of its 95 % confidence interval (Student's t) over each variant's runs.\n");
    }
    if test {
        s.push_str(
            "Test accuracy: best.safetensors on the labelled test images (a single run: ± its Wilson interval).\n",
        );
    }
    if spread || test {
        s.push('\n');
    }
    let test_header = if test { " test acc |" } else { "" };
    s.push_str(&format!(
        "| variant | params | MACs | runs | best val acc | final val acc | best val loss |{test_header} images/s | seconds | status |\n"
    ));
    s.push_str(&format!("|---|---:|---:|---:|---:|---:|---:|{}---:|---:|---|\n", if test { "---:|" } else { "" }));
    for g in groups {
        let status = match (&g.status, &g.error) {
            (Status::Failed, Some(e)) => format!("failed: {}", e.replace('|', "\\|").replace('\n', " ")),
            (Status::Pending, _) if g.runs > 0 => format!("pending ({} of {} done)", g.runs, g.of),
            (Status::Ok, _) if g.stopped_early > 0 => format!("ok ({} of {} stopped early)", g.stopped_early, g.runs),
            (st, _) => format!("{st:?}").to_lowercase(),
        };
        let test_cell = if test { format!(" {} |", cell(g.metric("test_acc"), 4)) } else { String::new() };
        s.push_str(&format!(
            "| {} | {} | {} | {}/{} | {} | {} | {} |{test_cell} {} | {} | {} |\n",
            g.variant,
            thousands(g.params as u64),
            thousands(g.macs),
            g.runs,
            g.of,
            cell(g.metric("best_val_acc"), 4),
            cell(g.metric("final_val_acc"), 4),
            cell(g.metric("best_val_loss"), 4),
            cell(g.metric("images_per_sec"), 1),
            cell(g.metric("seconds"), 1),
            status
        ));
    }
    // One section per baseline (`compare` shows several runs, each with its own).
    let mut baselines: Vec<&str> = Vec::new();
    for (b, _) in groups.iter().filter_map(|g| g.versus.as_ref()) {
        if !baselines.contains(&b.as_str()) {
            baselines.push(b);
        }
    }
    for baseline in baselines {
        s.push_str(&format!("\n## Against the baseline, `{baseline}`: best validation accuracy\n\n"));
        for g in groups {
            if let Some((b, c)) = g.versus.as_ref().filter(|(b, _)| b == baseline) {
                s.push_str(&format!("- {} vs {b}: {}\n", g.variant, sentence(c)));
            }
        }
    }
    s
}

/// `summary.csv`'s header: the variant's columns, then mean, sd, low and high of each metric,
/// then the comparison.
fn header() -> Vec<String> {
    let mut h: Vec<String> =
        ["variant", "values", "params", "macs", "runs", "of", "status", "error"].map(String::from).into();
    for (name, _) in METRICS {
        h.extend([name.to_string(), format!("{name}_sd"), format!("{name}_low"), format!("{name}_high")]);
    }
    h.extend(["baseline", "test", "diff", "diff_low", "diff_high", "p"].map(String::from));
    h
}

/// `summary.csv`: one line per variant.
pub fn to_csv(groups: &[Aggregate]) -> anyhow::Result<Vec<u8>> {
    let num = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header())?;
    for g in groups {
        let mut rec = vec![
            g.variant.clone(),
            g.values.clone(),
            g.params.to_string(),
            g.macs.to_string(),
            g.runs.to_string(),
            g.of.to_string(),
            format!("{:?}", g.status).to_lowercase(),
            g.error.clone().unwrap_or_default(),
        ];
        for e in &g.metrics {
            rec.extend([
                num(e.map(|e| e.mean)),
                num(e.and_then(|e| e.sd)),
                num(e.and_then(|e| e.ci).map(|c| c.0)),
                num(e.and_then(|e| e.ci).map(|c| c.1)),
            ]);
        }
        match &g.versus {
            Some((b, c)) => rec.extend([
                b.clone(),
                match c.test {
                    Test::PairedT => "paired_t".into(),
                    Test::McNemar => "mcnemar".into(),
                },
                c.diff.to_string(),
                num(c.ci.map(|c| c.0)),
                num(c.ci.map(|c| c.1)),
                num(c.p),
            ]),
            None => rec.extend(std::iter::repeat_n(String::new(), 6)),
        }
        w.write_record(&rec)?;
    }
    Ok(w.into_inner()?)
}

/// Reads a `summary.csv` back.
pub fn from_csv(path: &std::path::Path) -> anyhow::Result<Vec<Aggregate>> {
    let mut r = csv::Reader::from_path(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let headers = r.headers()?.clone();
    let expected = header();
    if headers.iter().ne(expected.iter().map(String::as_str)) {
        anyhow::bail!("{}: not a summary made by this version of ablate (its columns differ)", path.display());
    }
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        let text = |i: usize| rec.get(i).unwrap_or_default().to_string();
        let num = |i: usize| rec.get(i).filter(|s| !s.is_empty()).and_then(|s| s.parse::<f64>().ok());
        let int = |i: usize| {
            text(i).parse::<u64>().map_err(|e| anyhow::anyhow!("{}: column {}: {e}", path.display(), expected[i]))
        };
        let status = match text(6).as_str() {
            "ok" => Status::Ok,
            "failed" => Status::Failed,
            _ => Status::Pending,
        };
        let metrics = (0..METRICS.len())
            .map(|m| {
                let at = 8 + 4 * m;
                let (lo, hi) = (num(at + 2), num(at + 3));
                num(at).map(|mean| Estimate { n: 0, mean, sd: num(at + 1), ci: lo.zip(hi) })
            })
            .collect();
        let at = 8 + 4 * METRICS.len();
        let versus = (!text(at).is_empty()).then(|| {
            let test = if text(at + 1) == "mcnemar" { Test::McNemar } else { Test::PairedT };
            (
                text(at),
                Comparison {
                    test,
                    n: 0,
                    diff: num(at + 2).unwrap_or(0.0),
                    ci: num(at + 3).zip(num(at + 4)),
                    p: num(at + 5),
                },
            )
        });
        let runs = int(4)? as usize;
        let metrics: Vec<Option<Estimate>> = metrics;
        out.push(Aggregate {
            variant: text(0),
            values: text(1),
            params: int(2)? as usize,
            macs: int(3)?,
            runs,
            of: int(5)? as usize,
            status,
            error: Some(text(7)).filter(|e| !e.is_empty()),
            // summary.csv does not keep it; runs.csv does, per run.
            stopped_early: 0,
            metrics: metrics.into_iter().map(|e| e.map(|e| Estimate { n: runs, ..e })).collect(),
            versus,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(variant: &str, repeat: Option<usize>, acc: f64) -> Row {
        Row { best_val_acc: Some(acc), status: Status::Ok, ..Row::pending(variant, "", repeat, (10, 20)) }
    }

    #[test]
    fn repeats_pair_by_index_and_single_runs_use_mcnemar() {
        // Repeat 2 of the variant failed: the pairs are repeats 0 and 1 (and 3).
        let mut rows = vec![
            run("a/r0", Some(0), 0.70),
            run("a/r1", Some(1), 0.72),
            run("a/r2", Some(2), 0.71),
            run("a/r3", Some(3), 0.69),
            run("b/r0", Some(0), 0.75),
            run("b/r1", Some(1), 0.74),
            Row { status: Status::Failed, error: Some("NaN".into()), ..run("b/r2", Some(2), 0.0) },
            run("b/r3", Some(3), 0.70),
        ];
        rows[6].best_val_acc = None;
        let groups = aggregate(&rows, |_, _| panic!("repeats are not compared image by image"));
        assert_eq!(
            groups.iter().map(|g| (g.variant.as_str(), g.runs, g.of)).collect::<Vec<_>>(),
            [("a", 4, 4), ("b", 3, 4)]
        );
        assert_eq!(groups[1].status, Status::Failed);
        assert_eq!(groups[1].error.as_deref(), Some("b/r2: NaN"));
        let (baseline, c) = groups[1].versus.clone().unwrap();
        assert_eq!((baseline.as_str(), c.test, c.n), ("a", Test::PairedT, 3));
        assert!((c.diff - (0.05 + 0.02 + 0.01) / 3.0).abs() < 1e-12, "{c:?}");
        assert!(groups[0].versus.is_none(), "the baseline is not compared with itself");
        let e = groups[0].metric("best_val_acc").unwrap();
        assert!((e.mean - 0.705).abs() < 1e-12 && e.ci.is_some());

        // Single runs: the exact test on the images, and the marked baseline.
        let mut rows = vec![run("a", None, 0.7), run("b", None, 0.8), run("c", None, 0.6)];
        rows[1].baseline = true;
        let groups = aggregate(&rows, |v, b| {
            assert_eq!(b.variant, "b");
            Some(stats::mcnemar(if v.variant == "a" { 4 } else { 9 }, 1, 100))
        });
        assert!(groups[1].versus.is_none());
        let (baseline, c) = groups[0].versus.clone().unwrap();
        assert_eq!((baseline.as_str(), c.test), ("b", Test::McNemar));
        assert!((c.p.unwrap() - 0.375).abs() < 1e-12, "2 * P(X <= 1), X ~ Bin(5, 1/2) = 12/32");
        let md = markdown("t", &groups);
        assert!(
            md.contains("- a vs b: −3.0 points [")
                && md.contains("p = 0.375 (exact McNemar test on 100 validation images): not significant at 5 %"),
            "{md}"
        );
        assert!(
            md.contains("- c vs b: −8.0 points")
                && md.contains("p = 0.021 (exact McNemar test on 100 validation images): significant"),
            "{md}"
        );
        // summary.csv reads back as written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.csv");
        std::fs::write(&path, to_csv(&groups).unwrap()).unwrap();
        let back = from_csv(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].versus.clone().unwrap().1.p, c.p);
        assert_eq!(back[2].metric("best_val_acc").unwrap().mean, 0.6);
    }
}
