//! Image-folder discovery: `train/<class>/*` labelled by sorted folder name, `test/*` in natural
//! order with the id taken from the number in each file name.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use walkdir::WalkDir;

use super::DataError;
use crate::spec::{IdFormat, SplitSpec};

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// One image file and its label (`None` for test images).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub path: PathBuf,
    pub label: Option<usize>,
    /// Submission id of a test image (see [`test_id`]); a training image's file stem.
    pub id: String,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn require_dir(path: &Path, what: &'static str) -> Result<(), DataError> {
    if path.is_dir() { Ok(()) } else { Err(DataError::MissingDir { path: path.to_path_buf(), what }) }
}

/// Image files under `dir` (recursively, hidden entries skipped) in natural order of their
/// paths, so `2.jpg` comes before `10.jpg`.
fn images_under(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    let walker = WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_str().is_some_and(|n| n.starts_with('.')));
    for entry in walker {
        let entry = entry.map_err(|e| DataError::Walk { path: dir.to_path_buf(), message: e.to_string() })?;
        if entry.file_type().is_file() && is_image(entry.path()) {
            files.push(entry.into_path());
        }
    }
    files.sort_by(|a, b| natord::compare(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(files)
}

/// Class names: `configured` when given (each must be a folder), else the sorted sub-folder
/// names of `train_dir`.
pub fn class_names(train_dir: &Path, configured: Option<&[String]>) -> Result<Vec<String>, DataError> {
    require_dir(train_dir, "training folder (data.root/data.train_dir)")?;
    if let Some(names) = configured {
        for n in names {
            require_dir(&train_dir.join(n), "class folder listed in data.classes")?;
        }
        return Ok(names.to_vec());
    }
    let mut names: Vec<String> = std::fs::read_dir(train_dir)
        .map_err(|e| DataError::Walk { path: train_dir.to_path_buf(), message: e.to_string() })?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(DataError::NoClasses { path: train_dir.to_path_buf() });
    }
    Ok(names)
}

/// Every labelled image: for each class in order, its files in natural order.
pub fn labelled(train_dir: &Path, classes: &[String]) -> Result<Vec<Item>, DataError> {
    let mut items = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = train_dir.join(class);
        let files = images_under(&dir)?;
        if files.is_empty() {
            return Err(DataError::NoImages { path: dir });
        }
        items.extend(files.into_iter().map(|path| {
            let id = stem(&path);
            Item { path, label: Some(label), id }
        }));
    }
    Ok(items)
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The submission id of a test file: the first number in its stem (`cat.12.jpg` -> `12`,
/// `0042.png` -> `42`), or `None` when it holds no digits; its stem with [`IdFormat::Stem`].
pub fn test_id(path: &Path, format: IdFormat) -> Option<String> {
    let stem = stem(path);
    if format == IdFormat::Stem {
        return Some(stem);
    }
    let digits: String = stem.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    digits.parse::<u64>().ok().map(|n| n.to_string())
}

/// Every test image, in natural order of file names, with its submission id. Names without an
/// id, and names sharing one (`1.png` and `1.jpg`, `01.png` and `1.png`), are an error naming
/// them: the submission would be ambiguous.
pub fn unlabelled(test_dir: &Path, format: IdFormat) -> Result<Vec<Item>, DataError> {
    require_dir(test_dir, "test folder (data.root/data.test_dir)")?;
    let files = images_under(test_dir)?;
    if files.is_empty() {
        return Err(DataError::NoImages { path: test_dir.to_path_buf() });
    }
    let name = |p: &Path| p.strip_prefix(test_dir).unwrap_or(p).display().to_string();
    let unnumbered: Vec<String> = files.iter().filter(|p| test_id(p, format).is_none()).map(|p| name(p)).collect();
    if !unnumbered.is_empty() {
        return Err(DataError::Ids {
            message: format!(
                "{}: {} test image(s) without a number in their name ({}{}): the submission id is that number; rename them, or set submission.id = \"stem\" to use file names as ids",
                test_dir.display(),
                unnumbered.len(),
                unnumbered.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if unnumbered.len() > 5 { ", ..." } else { "" }
            ),
        });
    }
    let items: Vec<Item> = files
        .into_iter()
        .map(|path| Item { id: test_id(&path, format).unwrap_or_default(), path, label: None })
        .collect();
    let mut by_id: std::collections::BTreeMap<&str, Vec<&Path>> = Default::default();
    for item in &items {
        by_id.entry(&item.id).or_default().push(&item.path);
    }
    if let Some((id, paths)) = by_id.iter().find(|(_, p)| p.len() > 1) {
        let dup = by_id.values().filter(|p| p.len() > 1).count();
        return Err(DataError::Ids {
            message: format!(
                "{}: test images {} share the submission id {id} ({dup} id(s) shared in all): rename them{}",
                test_dir.display(),
                paths.iter().map(|p| name(p)).collect::<Vec<_>>().join(" and "),
                if format == IdFormat::Number { ", or set submission.id = \"stem\"" } else { "" }
            ),
        });
    }
    Ok(items)
}

/// A test folder laid out as a training folder (every image in a sub-folder named as a class)
/// answers itself: each item gets its folder's class. Returns whether it did (no image at the
/// top level, every first-level folder a class).
pub fn labels_from_folders(items: &mut [Item], test_dir: &Path, classes: &[String]) -> bool {
    let class_of = |item: &Item| {
        let rel = item.path.strip_prefix(test_dir).ok()?;
        let mut parts = rel.components();
        let first = parts.next()?.as_os_str().to_str()?;
        parts.next()?; // a file below the folder, not at the top level
        classes.iter().position(|c| c == first)
    };
    let labels: Option<Vec<usize>> = items.iter().map(class_of).collect();
    match labels {
        Some(labels) if !items.is_empty() => {
            for (item, label) in items.iter_mut().zip(labels) {
                item.label = Some(label);
            }
            true
        }
        _ => false,
    }
}

/// Gives each test item its answer from `labels` (a CSV `id,label`, the label a class name or
/// number): every test image must have one, else the error names the first missing ids.
pub fn attach_test_labels(items: &mut [Item], labels: &Path, classes: &[String]) -> Result<(), DataError> {
    let io =
        |e: String| DataError::Io { path: labels.to_path_buf(), operation: "read the test labels".into(), message: e };
    let mut reader = csv::Reader::from_path(labels).map_err(|e| io(e.to_string()))?;
    let mut answers = std::collections::HashMap::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| io(e.to_string()))?;
        let bad = |message: String| DataError::Labels { path: labels.to_path_buf(), line: line + 2, message };
        let (Some(id), Some(label)) = (record.get(0), record.get(1)) else {
            return Err(bad("expected two columns: id,label".into()));
        };
        let class = match classes.iter().position(|c| c == label.trim()) {
            Some(c) => c,
            None => label.trim().parse::<usize>().ok().filter(|&c| c < classes.len()).ok_or_else(|| {
                bad(format!(
                    "label `{label}` is neither a class ({}) nor a class number below {}",
                    classes.join(", "),
                    classes.len()
                ))
            })?,
        };
        answers.insert(id.trim().to_string(), class);
    }
    let missing: Vec<&str> = items.iter().filter(|i| !answers.contains_key(&i.id)).map(|i| i.id.as_str()).collect();
    if !missing.is_empty() {
        return Err(DataError::Labels {
            path: labels.to_path_buf(),
            line: 0,
            message: format!(
                "no label for {} test image id(s): {}{}",
                missing.len(),
                missing.iter().take(5).copied().collect::<Vec<_>>().join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            ),
        });
    }
    for item in items {
        item.label = answers.get(&item.id).copied();
    }
    Ok(())
}

/// Checks that [`split`] leaves every class at least one training image; else names the
/// class, its count and the fraction.
pub fn check_split(items: &[Item], classes: &[String], spec: &SplitSpec) -> Result<(), String> {
    let (train, _) = split(items, spec);
    for (class, name) in classes.iter().enumerate() {
        if !train.iter().any(|&i| items[i].label == Some(class)) {
            let n = items.iter().filter(|i| i.label == Some(class)).count();
            let how = if spec.folds > 1 {
                format!("data.folds = {}", spec.folds)
            } else {
                format!("data.val_fraction = {}", spec.val_fraction)
            };
            return Err(format!(
                "{how} holds out all {n} image(s) of class {name}: no training image is left for it; lower it or add images"
            ));
        }
    }
    Ok(())
}

/// The validation split, stratified: each class's items in an order shuffled by `spec.seed`;
/// then either the first `round(n * val_fraction)` validate (hold-out; at least one when the
/// fraction is positive and the class has two or more), or, with `folds = k`, item `j` of that
/// order belongs to part `j mod k` and part `fold` validates (k-fold cross-validation: the
/// parts are disjoint, cover every item, and each holds a class's items within one of n/k).
/// Returns `(train, val)` indices into `items`, each sorted.
pub fn split(items: &[Item], spec: &SplitSpec) -> (Vec<usize>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5EED_5B17);
    let n_classes = items.iter().filter_map(|i| i.label).max().map_or(0, |m| m + 1);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for class in 0..n_classes {
        let mut idx: Vec<usize> = (0..items.len()).filter(|&i| items[i].label == Some(class)).collect();
        idx.shuffle(&mut rng);
        if spec.folds > 1 {
            for (j, &i) in idx.iter().enumerate() {
                if j % spec.folds == spec.fold { val.push(i) } else { train.push(i) }
            }
            continue;
        }
        let mut n_val = (idx.len() as f64 * spec.val_fraction).round() as usize;
        if spec.val_fraction > 0.0 && n_val == 0 && idx.len() >= 2 {
            n_val = 1;
        }
        val.extend_from_slice(&idx[..n_val]);
        train.extend_from_slice(&idx[n_val..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// FNV-1a of every item's path and size: a different fingerprint means files were added,
/// removed, renamed or rewritten with another size.
pub fn fingerprint<'a>(items: impl Iterator<Item = &'a Item>) -> Result<String, DataError> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for item in items {
        let size = std::fs::metadata(&item.path)
            .map_err(|e| DataError::Io {
                path: item.path.clone(),
                operation: "read the size of".into(),
                message: e.to_string(),
            })?
            .len();
        for b in item.path.to_string_lossy().bytes().chain(size.to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ids_come_from_the_number_in_the_name() {
        assert_eq!(test_id(Path::new("test/12.jpg"), IdFormat::Number).as_deref(), Some("12"));
        assert_eq!(test_id(Path::new("test/cat.0042.png"), IdFormat::Number).as_deref(), Some("42"));
        assert_eq!(test_id(Path::new("test/abc.png"), IdFormat::Number), None);
        assert_eq!(test_id(Path::new("test/cat.0042.png"), IdFormat::Stem).as_deref(), Some("cat.0042"));
    }

    #[test]
    fn split_is_stratified_and_seeded() {
        let items: Vec<Item> = (0..30)
            .map(|i| Item {
                path: PathBuf::from(format!("{i}.png")),
                label: Some(usize::from(i >= 20)),
                id: i.to_string(),
            })
            .collect();
        let holdout = |seed| SplitSpec { val_fraction: 0.1, seed, folds: 1, fold: 0 };
        let (train, val) = split(&items, &holdout(7));
        assert_eq!(val.len(), 2 + 1); // round(20 * 0.1) + round(10 * 0.1)
        assert_eq!(train.len() + val.len(), 30);
        assert_eq!(val.iter().filter(|&&i| i >= 20).count(), 1);
        assert_eq!(split(&items, &holdout(7)), (train, val.clone()));
        assert_ne!(split(&items, &holdout(8)).1, val);
    }

    #[test]
    fn folds_are_disjoint_stratified_and_cover_every_item() {
        // 23 of one class, 10 of the other: parts of 4-5 and 2 per class.
        let items: Vec<Item> = (0..33)
            .map(|i| Item {
                path: PathBuf::from(format!("{i}.png")),
                label: Some(usize::from(i >= 23)),
                id: i.to_string(),
            })
            .collect();
        let k = 5;
        let mut seen = vec![0usize; items.len()];
        for fold in 0..k {
            let (train, val) = split(&items, &SplitSpec { val_fraction: 0.1, seed: 3, folds: k, fold });
            assert_eq!(train.len() + val.len(), items.len());
            assert!(train.iter().all(|i| !val.contains(i)), "fold {fold} overlaps");
            for &i in &val {
                seen[i] += 1;
            }
            let per_class = |c| val.iter().filter(|&&i| items[i].label == Some(c)).count();
            assert!(
                (4..=5).contains(&per_class(0)) && per_class(1) == 2,
                "fold {fold}: {} + {}",
                per_class(0),
                per_class(1)
            );
        }
        assert!(seen.iter().all(|&n| n == 1), "every item validates exactly once: {seen:?}");
    }
}
