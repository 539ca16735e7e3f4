//! The run folder: `runs/<YYYY-MM-DD_HH-MM-SS>_<name>/`, created fresh, never reused.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Local};

/// Folder name for a run of `name` started at `when`; the name is made filesystem-safe.
pub fn run_name(when: DateTime<Local>, name: &str) -> String {
    format!("{}_{}", when.format("%Y-%m-%d_%H-%M-%S"), safe(name))
}

/// Folder name of a run with a fixed id (the shards of one sweep share it): `<id>_<name>`.
pub fn shared_name(id: &str, name: &str) -> String {
    format!("{id}_{}", safe(name))
}

/// `name` with characters other than letters, digits and `-_.=,+` replaced by `_`.
pub fn safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.=,+".contains(c) { c } else { '_' }).collect()
}

/// Creates a new run folder under `root`; when the name is taken (two runs in one second) a
/// `-2`, `-3`, ... suffix is added. An existing folder is never reused.
pub fn create(root: &Path, name: &str, when: DateTime<Local>) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let base = run_name(when, name);
    for n in 1.. {
        let candidate = if n == 1 { root.join(&base) } else { root.join(format!("{base}-{n}")) };
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the suffix loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn same_second_runs_get_suffixes() {
        let root = tempfile::tempdir().unwrap();
        let when = Local.with_ymd_and_hms(2026, 11, 29, 7, 30, 12).unwrap();
        let a = create(root.path(), "le net", when).unwrap();
        let b = create(root.path(), "le net", when).unwrap();
        assert_eq!(a.file_name().unwrap(), "2026-11-29_07-30-12_le_net");
        assert_eq!(b.file_name().unwrap(), "2026-11-29_07-30-12_le_net-2");
    }
}
