//! Sweeps: axes of values over dotted config keys, expanded into variants (pure functions).
//!
//! Order is documented and tested: axes are sorted by key; in `grid` mode the variants are
//! the cartesian product with the **last** axis varying fastest (nested loops in key order);
//! in `zip` mode variant i takes the i-th value of every axis (all axes equally long).

use std::collections::BTreeMap;

use super::{ConfigError, Override};

/// How axes combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every combination.
    #[default]
    Grid,
    /// Values paired by position.
    Zip,
}

/// One swept key and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<toml::Value>,
}

/// A sweep: its axes (sorted by key) and mode, how often each variant trains, and the
/// variant the others are compared with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sweep {
    pub axes: Vec<Axis>,
    pub mode: Mode,
    /// `repeats = N`: every variant trains N times (seeds `seed + r`).
    pub repeats: Option<usize>,
    /// `baseline = "groups=1"`: a variant's folder name (default: the first variant).
    pub baseline: Option<String>,
    /// `[[sweep.variants]]`: variants named and set one by one, in file order (instead of
    /// axes), for ablations whose variants differ in several keys at once.
    pub named: Vec<Variant>,
}

/// One point of a sweep: the value of every axis, and a short folder name.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Folder name: `groups=8`, `groups=8,lr=0.0003`.
    pub name: String,
    /// `(key, value)` per axis, in axis order.
    pub values: Vec<(String, toml::Value)>,
}

impl Variant {
    /// The variant's values as `--set` overrides, applied after the experiment's own.
    pub fn overrides(&self) -> Vec<Override> {
        self.values.iter().map(|(k, v)| Override { key: k.clone(), value: v.clone(), raw: format_value(v) }).collect()
    }
}

impl Sweep {
    /// Reads an experiment's `[sweep]` table: `mode = "grid" | "zip"` and `"dotted.key" = [values]`.
    pub fn from_table(table: &BTreeMap<String, toml::Value>, file: &str) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { path: file.into(), key: key.into(), message };
        let mut sweep = Sweep::default();
        for (key, value) in table {
            if key == "repeats" {
                let n = value.as_integer().filter(|n| *n >= 1).ok_or_else(|| {
                    invalid("sweep.repeats", format!("expected a whole number of runs >= 1, got {value}"))
                })?;
                sweep.repeats = Some(n as usize);
                continue;
            }
            if key == "baseline" {
                let name = value.as_str().ok_or_else(|| {
                    invalid(
                        "sweep.baseline",
                        format!("expected a variant's folder name such as \"groups=1\", got {value}"),
                    )
                })?;
                sweep.baseline = Some(name.to_string());
                continue;
            }
            if key == "variants" {
                sweep.named = named_variants(value, file)?;
                continue;
            }
            if key == "mode" {
                sweep.mode = match value.as_str() {
                    Some("grid") => Mode::Grid,
                    Some("zip") => Mode::Zip,
                    _ => return Err(invalid("sweep.mode", format!("expected \"grid\" or \"zip\", got {value}"))),
                };
                continue;
            }
            let values = value.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                invalid(&format!("sweep.\"{key}\""), format!("expected a non-empty list of values, got {value}"))
            })?;
            sweep.axes.push(Axis { key: key.clone(), values: values.clone() });
        }
        Ok(sweep)
    }

    /// Adds `--sweep key=v1,v2,...` axes, replacing an axis with the same key.
    pub fn with_cli(mut self, args: &[String]) -> Result<Self, ConfigError> {
        for arg in args {
            let (key, raw) = arg.split_once('=').ok_or_else(|| ConfigError::Override {
                arg: arg.clone(),
                reason: "expected --sweep key=v1,v2,...".into(),
            })?;
            let values: Vec<toml::Value> = split_values(raw)
                .iter()
                .map(|v| Override::parse(&format!("{key}={v}")).map(|o| o.value))
                .collect::<Result<_, _>>()?;
            if values.is_empty() {
                return Err(ConfigError::Override { arg: arg.clone(), reason: "no values".into() });
            }
            self.axes.retain(|a| a.key != key);
            self.axes.push(Axis { key: key.trim().to_string(), values });
        }
        self.axes.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(self)
    }

    /// Every variant, in the documented order.
    pub fn expand(&self) -> Result<Vec<Variant>, ConfigError> {
        if !self.named.is_empty() {
            if let Some(a) = self.axes.first() {
                return Err(ConfigError::Invalid {
                    path: "sweep".into(),
                    key: a.key.clone(),
                    message: "sweep axes do not combine with [[sweep.variants]]: set the key in each variant".into(),
                });
            }
            return Ok(self.named.clone());
        }
        if self.axes.is_empty() {
            return Ok(Vec::new());
        }
        let points: Vec<Vec<usize>> = match self.mode {
            Mode::Zip => {
                let n = self.axes[0].values.len();
                if let Some(a) = self.axes.iter().find(|a| a.values.len() != n) {
                    return Err(ConfigError::Invalid {
                        path: "sweep".into(),
                        key: a.key.clone(),
                        message: format!(
                            "zip mode needs equally long lists: `{}` has {n} values, `{}` has {}",
                            self.axes[0].key,
                            a.key,
                            a.values.len()
                        ),
                    });
                }
                (0..n).map(|i| vec![i; self.axes.len()]).collect()
            }
            Mode::Grid => {
                let mut points = vec![vec![]];
                for axis in &self.axes {
                    points = points
                        .into_iter()
                        .flat_map(|p| {
                            (0..axis.values.len()).map(move |i| {
                                let mut q = p.clone();
                                q.push(i);
                                q
                            })
                        })
                        .collect();
                }
                points
            }
        };
        let labels = short_labels(&self.axes.iter().map(|a| a.key.as_str()).collect::<Vec<_>>());
        let mut seen = BTreeMap::<String, usize>::new();
        Ok(points
            .into_iter()
            .map(|p| {
                let values: Vec<(String, toml::Value)> =
                    self.axes.iter().zip(&p).map(|(a, &i)| (a.key.clone(), a.values[i].clone())).collect();
                let mut name = values
                    .iter()
                    .zip(&labels)
                    .map(|((_, v), label)| format!("{label}={}", safe(&format_value(v))))
                    .collect::<Vec<_>>()
                    .join(",");
                let count = seen.entry(name.clone()).or_default();
                *count += 1;
                if *count > 1 {
                    name = format!("{name}-{count}");
                }
                Variant { name, values }
            })
            .collect())
    }
}

/// `[[sweep.variants]]` entries: `name` (a folder name) and `set` (dotted key -> value).
fn named_variants(value: &toml::Value, file: &str) -> Result<Vec<Variant>, ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid { path: file.into(), key, message };
    let list = value.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
        invalid("sweep.variants".into(), "expected [[sweep.variants]] tables with a name and a set".into())
    })?;
    let mut out: Vec<Variant> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = |k: &str| format!("sweep.variants.{i}.{k}");
        let table = v.as_table().ok_or_else(|| invalid(key("name"), format!("expected a table, got {v}")))?;
        if let Some(other) = table.keys().find(|k| *k != "name" && *k != "set") {
            return Err(invalid(key(other), "unknown key: a variant has a name and a set".into()));
        }
        let name = table.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        if name.is_empty() || safe(name) != name {
            return Err(invalid(
                key("name"),
                format!("expected a folder name of letters, digits and ._+-, got {name:?}"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(key("name"), format!("two variants are named {name:?}")));
        }
        let values = match table.get("set") {
            None => Vec::new(),
            Some(toml::Value::Table(t)) => t.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(other) => return Err(invalid(key("set"), format!("expected a table of dotted keys, got {other}"))),
        };
        out.push(Variant { name: name.to_string(), values });
    }
    Ok(out)
}

/// Splits `1,2,[3, 4]` at top-level commas (not inside brackets, braces or quotes).
fn split_values(raw: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for c in raw.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            ',' if depth == 0 && !quoted => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The shortest key suffixes that tell the axes apart: `model.params.groups` -> `groups`.
fn short_labels(keys: &[&str]) -> Vec<String> {
    let mut depth = vec![1usize; keys.len()];
    let label = |k: &str, d: usize| {
        let parts: Vec<&str> = k.split('.').collect();
        parts[parts.len().saturating_sub(d)..].join(".")
    };
    loop {
        let labels: Vec<String> = keys.iter().zip(&depth).map(|(k, &d)| label(k, d)).collect();
        let mut clash = false;
        for i in 0..keys.len() {
            if labels.iter().filter(|l| **l == labels[i]).count() > 1 && depth[i] < keys[i].split('.').count() {
                depth[i] += 1;
                clash = true;
            }
        }
        if !clash {
            return labels;
        }
    }
}

/// A value as it appears in folder names and tables: `8`, `0.0003`, `sgd`, `[1, 2]`.
pub fn format_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(f) => format!("{f}"),
        other => other.to_string(),
    }
}

/// Keeps a value's part of a folder name portable: anything but `[A-Za-z0-9._+-]` becomes `_`
/// (commas too: they separate the axes).
fn safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(src: &str) -> BTreeMap<String, toml::Value> {
        toml::from_str(src).unwrap()
    }

    #[test]
    fn grid_is_the_product_with_the_last_axis_fastest() {
        let s = Sweep::from_table(&table("\"optimizer.lr\" = [1e-3, 3e-4]\n\"model.params.groups\" = [1, 32]"), "x")
            .unwrap();
        let names: Vec<String> = s.expand().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["groups=1,lr=0.001", "groups=1,lr=0.0003", "groups=32,lr=0.001", "groups=32,lr=0.0003"]);
    }

    #[test]
    fn zip_pairs_values_and_checks_lengths() {
        let s = Sweep::from_table(&table("mode = \"zip\"\n\"a.x\" = [1, 2]\n\"b.y\" = [\"p\", \"q\"]"), "x").unwrap();
        let names: Vec<String> = s.expand().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["x=1,y=p", "x=2,y=q"]);
        let bad = Sweep::from_table(&table("mode = \"zip\"\n\"a.x\" = [1, 2]\n\"b.y\" = [3]"), "x").unwrap();
        assert!(bad.expand().unwrap_err().to_string().contains("equally long"));
    }

    #[test]
    fn cli_axes_add_or_replace_and_labels_stay_distinct() {
        let s = Sweep::from_table(&table("\"model.params.groups\" = [1, 2]"), "x")
            .unwrap()
            .with_cli(&["model.params.groups=4,8".into(), "model.layers.3.stage.out=[1, 2],64".into()])
            .unwrap();
        assert_eq!(s.axes[1].values, vec![toml::Value::Integer(4), toml::Value::Integer(8)]);
        assert_eq!(s.axes[0].values.len(), 2);
        assert_eq!(short_labels(&["a.out", "b.out", "c.groups"]), ["a.out", "b.out", "groups"]);
        let v = &s.expand().unwrap()[0];
        assert_eq!(v.name, "out=_1__2_,groups=4");
        assert_eq!(v.overrides()[1].key, "model.params.groups");
    }

    #[test]
    fn named_variants_keep_file_order_and_set_several_keys() {
        let src = "repeats = 2\n[[variants]]\nname = \"base\"\n[[variants]]\nname = \"ls+mix\"\nset = { \"train.label_smoothing\" = 0.1, \"train.mixup\" = 0.2 }\n[[variants]]\nname = \"a\"";
        let s = Sweep::from_table(&table(src), "x").unwrap();
        let v = s.expand().unwrap();
        assert_eq!(v.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["base", "ls+mix", "a"]);
        assert!(v[0].values.is_empty());
        let set = v[1].overrides();
        let keys: Vec<&str> = set.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["train.label_smoothing", "train.mixup"]);
        assert_eq!(s.repeats, Some(2));
        // Axes do not mix with named variants; names must be folder names and distinct.
        let mixed = s.clone().with_cli(&["optimizer.lr=1e-3,1e-4".into()]).unwrap();
        assert!(mixed.expand().unwrap_err().to_string().contains("do not combine with [[sweep.variants]]"));
        let bad = Sweep::from_table(&table("[[variants]]\nname = \"a b\""), "x").unwrap_err().to_string();
        assert!(bad.contains("sweep.variants.0.name") && bad.contains("letters, digits"), "{bad}");
        let twice = Sweep::from_table(&table("[[variants]]\nname = \"a\"\n[[variants]]\nname = \"a\""), "x");
        assert!(twice.unwrap_err().to_string().contains("two variants are named \"a\""));
    }
}
