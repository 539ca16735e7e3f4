//! What validation carries from key to key: the file (to name a problem), `model.params`
//! and `$classes` (to substitute `$name` references) and the block templates.

use std::collections::BTreeMap;

use super::ConfigError;
use super::schema::{BlockTemplate, Int};

/// What a check needs to name a problem (the file), to substitute `$name` references and to
/// find block templates.
pub struct At<'a> {
    pub file: &'a str,
    pub classes: usize,
    pub params: &'a BTreeMap<String, toml::Value>,
    pub blocks: &'a BTreeMap<String, BlockTemplate>,
}

/// [`At`] owning what it refers to, kept by a stage's block maker until the model calls it.
pub struct OwnedAt {
    file: String,
    classes: usize,
    params: BTreeMap<String, toml::Value>,
    blocks: BTreeMap<String, BlockTemplate>,
}

impl OwnedAt {
    pub fn at(&self) -> At<'_> {
        At { file: &self.file, classes: self.classes, params: &self.params, blocks: &self.blocks }
    }
}

impl At<'_> {
    pub fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid { path: self.file.to_string(), key: key.into(), message }
    }

    pub fn owned(&self) -> OwnedAt {
        OwnedAt {
            file: self.file.into(),
            classes: self.classes,
            params: self.params.clone(),
            blocks: self.blocks.clone(),
        }
    }

    /// The value of `$name` outside templates: `model.params`' entry, or `$classes`.
    pub fn outer(&self, name: &str) -> Option<toml::Value> {
        if name == "classes" {
            return Some(toml::Value::Integer(self.classes as i64));
        }
        self.params.get(name).cloned()
    }

    /// A whole number: literal, a `"$name"` reference into `model.params` (`$classes`: the
    /// number of classes), or an expression of them (`"$width * 2"`).
    pub fn int(&self, v: &Int, key: &str) -> Result<usize, ConfigError> {
        let r = match v {
            Int::Value(n) => return Ok(*n),
            Int::Ref(r) => r,
        };
        if !r.contains('$') {
            return Err(self.invalid(key, format!("expected a whole number or a \"$name\" reference, got \"{r}\"")));
        }
        let mut bad_param = None;
        let mut lookup = |name: &str| {
            let Some(value) = self.outer(name) else {
                let names: Vec<&str> = self.params.keys().map(String::as_str).chain(["classes"]).collect();
                let hint = super::suggest(name, &names).map(|s| format!(" (did you mean `${s}`?)")).unwrap_or_default();
                return Err(format!("`${name}` is not in model.params{hint}"));
            };
            value.as_integer().ok_or_else(|| {
                bad_param = Some((format!("model.params.{name}"), format!("expected a whole number, got {value}")));
                String::new()
            })
        };
        let n = super::expr::eval(r, &mut lookup);
        if let Some((k, m)) = bad_param {
            return Err(self.invalid(&k, m));
        }
        let n = n.map_err(|m| self.invalid(key, m))?;
        usize::try_from(n).map_err(|_| self.invalid(key, format!("\"{r}\" is {n}: expected a whole number >= 0")))
    }

    /// [`At::int`], at least 1.
    pub fn positive(&self, v: &Int, key: &str) -> Result<usize, ConfigError> {
        let n = self.int(v, key)?;
        if n == 0 {
            return Err(self.invalid(key, "expected at least 1".into()));
        }
        Ok(n)
    }

    /// An optional setting: [`At::positive`] when given, else `default`.
    pub fn positive_or(&self, v: &Option<Int>, key: &str, default: usize) -> Result<usize, ConfigError> {
        v.as_ref().map(|v| self.positive(v, key)).transpose().map(|n| n.unwrap_or(default))
    }
}
