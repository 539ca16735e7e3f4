//! `val_predictions.csv`: each validation image (its path under the training folder), its
//! label and the class the best weights give it. Two runs that validated on the same images
//! are compared image by image from these (the summary's McNemar test).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One validation image's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValPrediction {
    /// Path under the training folder: `cats/12.jpg`.
    pub image: String,
    pub label: usize,
    pub predicted: usize,
}

pub fn write(path: &Path, rows: &[ValPrediction]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    Ok(super::write_atomic(path, &w.into_inner()?)?)
}

/// The rows of `path`, or `None` when there is no such file.
pub fn read(path: &Path) -> anyhow::Result<Option<Vec<ValPrediction>>> {
    if !path.exists() {
        return Ok(None);
    }
    let mut r = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(r.deserialize().collect::<Result<_, _>>().with_context(|| format!("cannot read {}", path.display()))?))
}

/// `(only_a, only_b, n)`: of the `n` images both runs classified, those only `a` got right
/// and those only `b` did; `None` when they did not validate on the same images (other split
/// seeds or folds): then no image-by-image comparison holds.
pub fn discordant(a: &[ValPrediction], b: &[ValPrediction]) -> Option<(usize, usize, usize)> {
    let by_image: std::collections::HashMap<&str, &ValPrediction> = b.iter().map(|p| (p.image.as_str(), p)).collect();
    if a.len() != b.len() || a.iter().any(|p| by_image.get(p.image.as_str()).is_none_or(|q| q.label != p.label)) {
        return None;
    }
    let (mut only_a, mut only_b) = (0, 0);
    for p in a {
        let (ra, rb) = (p.predicted == p.label, by_image[p.image.as_str()].predicted == p.label);
        only_a += usize::from(ra && !rb);
        only_b += usize::from(rb && !ra);
    }
    Some((only_a, only_b, a.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(image: &str, label: usize, predicted: usize) -> ValPrediction {
        ValPrediction { image: image.into(), label, predicted }
    }

    #[test]
    fn discordant_pairs_are_counted_image_by_image() {
        let a = [p("x/1.png", 0, 0), p("x/2.png", 1, 0), p("y/3.png", 1, 1), p("y/4.png", 0, 1)];
        // b in another order: right on 2 and 4, wrong on 1, right on 3.
        let b = [p("y/4.png", 0, 0), p("x/1.png", 0, 1), p("x/2.png", 1, 1), p("y/3.png", 1, 1)];
        assert_eq!(discordant(&a, &b), Some((1, 2, 4)));
        // Other images: no pairing.
        let c = [p("x/1.png", 0, 0), p("x/9.png", 1, 0), p("y/3.png", 1, 1), p("y/4.png", 0, 1)];
        assert_eq!(discordant(&a, &c), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val_predictions.csv");
        write(&path, &a).unwrap();
        assert_eq!(read(&path).unwrap().unwrap(), a);
        assert_eq!(read(&dir.path().join("none.csv")).unwrap(), None);
    }
}
