//! The statistics of an ablation: a metric's mean over repeats with its 95 % confidence
//! interval (Student's t), and a variant compared with the baseline — a paired t-test across
//! repeats that share seeds, or an exact McNemar test on the same validation images for
//! single runs. The distributions come from `statrs`; what is here is only their textbook use,
//! checked against SciPy in `tests/suite/stats.rs`.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal, StudentsT};

/// Confidence level of every interval.
pub const LEVEL: f64 = 0.95;

/// A metric over `n` runs: mean, sample standard deviation and the 95 % interval of the mean
/// (`mean ± t(0.975, n − 1) · sd / √n`); no spread from a single run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub n: usize,
    pub mean: f64,
    pub sd: Option<f64>,
    pub ci: Option<(f64, f64)>,
}

/// The estimate of the values `xs`; `None` when there are none.
pub fn estimate(xs: &[f64]) -> Option<Estimate> {
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return Some(Estimate { n, mean, sd: None, ci: None });
    }
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let half = t_quantile(n - 1) * sd / (n as f64).sqrt();
    Some(Estimate { n, mean, sd: Some(sd), ci: Some((mean - half, mean + half)) })
}

/// The two-sided 95 % quantile of Student's t with `df` degrees of freedom.
fn t_quantile(df: usize) -> f64 {
    let t = StudentsT::new(0.0, 1.0, df as f64).expect("df >= 1");
    t.inverse_cdf(0.5 + LEVEL / 2.0)
}

/// The 95 % Wilson score interval of a proportion, `k` of `n` (SciPy's
/// `binomtest(k, n).proportion_ci(method="wilson")`): sound at small counts and near 0 or 1,
/// where the normal approximation is not. `None` for `n = 0`.
pub fn wilson(k: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z = Normal::standard().inverse_cdf(0.5 + LEVEL / 2.0);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    Some((centre - half, centre + half))
}

/// A confusion matrix and the scores read from it (precision, recall, F1 per class;
/// accuracy and its interval).
/// Counts of (true class, predicted class) over a set of images.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub classes: Vec<String>,
    /// `counts[t][p]`: images of class `t` predicted as `p`.
    pub counts: Vec<Vec<u64>>,
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

impl Confusion {
    /// The matrix of `(label, predicted)` pairs.
    pub fn from_pairs(classes: &[String], pairs: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let k = classes.len();
        let mut counts = vec![vec![0u64; k]; k];
        for (t, p) in pairs {
            counts[t][p] += 1;
        }
        Self { classes: classes.to_vec(), counts }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    pub fn correct(&self) -> u64 {
        (0..self.classes.len()).map(|i| self.counts[i][i]).sum()
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.total() > 0).then(|| self.correct() as f64 / self.total() as f64)
    }

    /// The accuracy's 95 % Wilson score interval (see [`wilson`]).
    pub fn accuracy_interval(&self) -> Option<(f64, f64)> {
        wilson(self.correct(), self.total())
    }

    pub fn per_class(&self) -> Vec<ClassScore> {
        let k = self.classes.len();
        (0..k)
            .map(|c| {
                let tp = self.counts[c][c] as f64;
                let predicted: u64 = (0..k).map(|t| self.counts[t][c]).sum();
                let support: u64 = self.counts[c].iter().sum();
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

    /// Each class's scores as a markdown table.
    pub fn per_class_table(&self) -> String {
        let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        let mut s = String::from("| class | precision | recall | F1 | images |\n|---|---:|---:|---:|---:|\n");
        for (class, score) in self.classes.iter().zip(self.per_class()) {
            s.push_str(&format!(
                "| {class} | {} | {} | {} | {} |\n",
                num(score.precision),
                num(score.recall),
                num(score.f1),
                score.support
            ));
        }
        s
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
}

/// Which test a [`Comparison`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// Paired t-test of the per-repeat differences (repeats share seeds).
    PairedT,
    /// Exact McNemar test on the images both runs classified (one run each).
    McNemar,
}

/// A variant against the baseline: the mean difference (variant − baseline), its 95 %
/// interval, and the two-sided p-value of "no difference".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub test: Test,
    /// Pairs compared: repeats, or validation images.
    pub n: usize,
    pub diff: f64,
    pub ci: Option<(f64, f64)>,
    pub p: Option<f64>,
}

/// Paired t-test of `variant[i] − baseline[i]` (the same repeat of each); needs two pairs for
/// an interval and a p-value. Identical differences (no spread) give p = 1 when they are all
/// zero and p = 0 otherwise, as the limit of the test.
pub fn paired_t(variant: &[f64], baseline: &[f64]) -> Option<Comparison> {
    let d: Vec<f64> = variant.iter().zip(baseline).map(|(v, b)| v - b).collect();
    let e = estimate(&d)?;
    let p = e.sd.map(|sd| {
        if sd == 0.0 {
            return if e.mean == 0.0 { 1.0 } else { 0.0 };
        }
        let t = e.mean / (sd / (e.n as f64).sqrt());
        let dist = StudentsT::new(0.0, 1.0, (e.n - 1) as f64).expect("df >= 1");
        (2.0 * dist.cdf(-t.abs())).min(1.0)
    });
    Some(Comparison { test: Test::PairedT, n: e.n, diff: e.mean, ci: e.ci, p })
}

/// Exact McNemar test on `n` images: `only_baseline` right only in the baseline run,
/// `only_variant` right only in the variant's. The p-value is the two-sided binomial test of
/// the discordant pairs at 1/2 (SciPy's `binomtest`); the interval of the accuracy difference
/// is the Wald interval for paired proportions, `d ± z · √(b + c − (c − b)²/n) / n`.
pub fn mcnemar(only_baseline: usize, only_variant: usize, n: usize) -> Comparison {
    let (b, c) = (only_baseline as f64, only_variant as f64);
    let discordant = only_baseline + only_variant;
    let diff = if n == 0 { 0.0 } else { (c - b) / n as f64 };
    let p = if discordant == 0 {
        1.0
    } else {
        let dist = Binomial::new(0.5, discordant as u64).expect("p in [0, 1]");
        (2.0 * dist.cdf(only_baseline.min(only_variant) as u64)).min(1.0)
    };
    let ci = (n > 0).then(|| {
        let z = Normal::standard().inverse_cdf(0.5 + LEVEL / 2.0);
        let half = z * ((b + c) - (c - b).powi(2) / n as f64).max(0.0).sqrt() / n as f64;
        (diff - half, diff + half)
    });
    Comparison { test: Test::McNemar, n, diff, ci, p: Some(p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases_by_hand() {
        let e = estimate(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((e.n, e.mean, e.sd), (3, 2.0, Some(1.0)));
        // t(0.975, 2) = 4.302652729...
        let (lo, hi) = e.ci.unwrap();
        assert!((hi - 2.0 - 4.302_652_729_911_275 / 3f64.sqrt()).abs() < 1e-9 && (lo + hi - 4.0).abs() < 1e-12);
        assert_eq!(estimate(&[0.5]).unwrap().ci, None);
        assert_eq!(estimate(&[]), None);
        // No discordant pair: no evidence of a difference.
        assert_eq!(mcnemar(0, 0, 10).p, Some(1.0));
        // 0 against 6 discordant: 2 * 0.5^6.
        assert!((mcnemar(0, 6, 100).p.unwrap() - 2.0 * 0.5f64.powi(6)).abs() < 1e-12);
        assert_eq!(paired_t(&[1.0, 1.0], &[0.0, 0.0]).unwrap().p, Some(0.0));
        assert_eq!(paired_t(&[1.0, 2.0], &[1.0, 2.0]).unwrap().p, Some(1.0));
    }
}
