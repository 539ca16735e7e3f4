//! The summary's statistics against SciPy's (Debian's `python3-scipy` for `/usr/bin/python3`):
//! Student-t intervals of a mean, the paired t-test, the exact McNemar test and Wilson's
//! interval of a proportion. The cases and
//! SciPy's answers are printed (`--nocapture`) so a run records them.

use ablate::stats::{self, Test};
use serde_json::Value;

const SCIPY: &str = r#"
import json, sys
import numpy as np
from scipy import stats
cases = json.load(sys.stdin)
out = {"estimates": [], "paired": [], "mcnemar": []}
for xs in cases["estimates"]:
    xs = np.array(xs, dtype=np.float64)
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=xs.mean(), scale=stats.sem(xs))
    out["estimates"].append({"mean": xs.mean(), "sd": xs.std(ddof=1), "ci": [lo, hi]})
for v, b in cases["paired"]:
    r = stats.ttest_rel(v, b)
    ci = r.confidence_interval(0.95)
    out["paired"].append({"p": r.pvalue, "ci": [ci.low, ci.high], "diff": float(np.mean(np.subtract(v, b)))})
for b, c in cases["mcnemar"]:
    out["mcnemar"].append({"p": stats.binomtest(min(b, c), b + c, 0.5).pvalue})
out["wilson"] = []
for k, n in cases["wilson"]:
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    out["wilson"].append([ci.low, ci.high])
print(json.dumps(out))
"#;

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "{what}: ablate {a}, SciPy {b}");
}

#[test]
fn statistics_equal_scipys() {
    let estimates: Vec<Vec<f64>> = vec![
        vec![0.73, 0.735],
        vec![0.730, 0.735, 0.735, 0.750],
        vec![0.61, 0.64, 0.58, 0.66, 0.63],
        (0..10).map(|i| 0.8 + 0.013 * ((i * 7 % 10) as f64) - 0.05).collect(),
    ];
    let paired: Vec<(Vec<f64>, Vec<f64>)> = vec![
        (vec![0.75, 0.74, 0.77], vec![0.73, 0.735, 0.74]),
        (vec![0.70, 0.72], vec![0.71, 0.69]),
        (vec![0.61, 0.64, 0.58, 0.66, 0.63], vec![0.60, 0.60, 0.59, 0.61, 0.62]),
    ];
    let mcnemar: Vec<(usize, usize)> = vec![(3, 9), (9, 3), (0, 5), (12, 12), (40, 61), (1, 0)];
    let wilson: Vec<(u64, u64)> = vec![(5, 9), (167, 200), (0, 12), (40, 40), (1, 1)];
    let cases = serde_json::json!({"estimates": estimates, "paired": paired, "mcnemar": mcnemar, "wilson": wilson});
    let scipy = crate::common::python_json(SCIPY, &cases);
    println!("cases: {cases}\nSciPy 1.x: {scipy}");
    let f = |v: &Value| v.as_f64().unwrap();

    for (xs, s) in estimates.iter().zip(scipy["estimates"].as_array().unwrap()) {
        let e = stats::estimate(xs).unwrap();
        close(e.mean, f(&s["mean"]), "mean");
        close(e.sd.unwrap(), f(&s["sd"]), "sd");
        let (lo, hi) = e.ci.unwrap();
        close(lo, f(&s["ci"][0]), "ci low");
        close(hi, f(&s["ci"][1]), "ci high");
    }
    for ((v, b), s) in paired.iter().zip(scipy["paired"].as_array().unwrap()) {
        let c = stats::paired_t(v, b).unwrap();
        assert_eq!(c.test, Test::PairedT);
        close(c.diff, f(&s["diff"]), "paired diff");
        close(c.p.unwrap(), f(&s["p"]), "paired p");
        let (lo, hi) = c.ci.unwrap();
        close(lo, f(&s["ci"][0]), "paired ci low");
        close(hi, f(&s["ci"][1]), "paired ci high");
    }
    for (&(b, c), s) in mcnemar.iter().zip(scipy["mcnemar"].as_array().unwrap()) {
        let m = stats::mcnemar(b, c, 200);
        assert_eq!(m.test, Test::McNemar);
        close(m.p.unwrap(), f(&s["p"]), &format!("McNemar p ({b}, {c})"));
    }
    for (&(k, n), s) in wilson.iter().zip(scipy["wilson"].as_array().unwrap()) {
        let (lo, hi) = stats::wilson(k, n).unwrap();
        close(lo, f(&s[0]), &format!("Wilson low ({k} of {n})"));
        close(hi, f(&s[1]), &format!("Wilson high ({k} of {n})"));
    }
}
