//! Experiment configuration: raw TOML schema, loading with overrides, validation into a spec.

mod at;
mod expr;
mod graph;
pub mod load;
pub mod resolve;
pub mod schema;
pub mod sweep;
mod transforms;

use std::path::PathBuf;

pub use load::Override;
pub use resolve::resolve;

/// Everything that can be wrong with an experiment before it trains.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: not valid TOML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("`extends` forms a cycle: {chain}")]
    ExtendsCycle { chain: String },
    #[error("bad override `{arg}`: {reason}")]
    Override { arg: String, reason: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid { path: String, key: String, message: String },
    #[error("{0}")]
    Figment(String),
}

impl ConfigError {
    /// Renders every error figment found, each with its source, key path and, for a misspelt
    /// key, the nearest valid one.
    pub fn from_figment(err: figment::Error) -> Self {
        let lines: Vec<String> = err.into_iter().map(|e| describe(&e)).collect();
        ConfigError::Figment(lines.join("\n"))
    }
}

fn describe(e: &figment::Error) -> String {
    use figment::error::Kind;
    let source = e
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ => m.name.to_string(),
        })
        .unwrap_or_else(|| "experiment".into());
    let key = e.path.join(".");
    let what = match &e.kind {
        Kind::UnknownField(field, expected) => {
            // figment's path already ends in the unknown field.
            let full = if key.is_empty() { field.clone() } else { key.clone() };
            return format!(
                "{source}: unknown key `{full}`{}; valid keys here: {}",
                suggest(field, expected).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
                expected.join(", ")
            );
        }
        Kind::UnknownVariant(v, expected) => format!(
            "unknown value `{v}`{}; expected one of: {}",
            suggest(v, expected).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
            expected.join(", ")
        ),
        Kind::MissingField(f) => {
            let full = if key.is_empty() { f.to_string() } else { format!("{key}.{f}") };
            return format!("{source}: missing key `{full}`");
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        other => other.to_string(),
    };
    if key.is_empty() { format!("{source}: {what}") } else { format!("{source}: key `{key}`: {what}") }
}

/// The valid name closest to a misspelt one, if any is close enough to be a likely typo.
pub fn suggest<'a>(wrong: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::damerau_levenshtein(wrong, v), *v))
        .filter(|(d, v)| *d <= 2.max(v.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_nearest_key() {
        assert_eq!(suggest("lrr", &["kind", "lr", "momentum"]), Some("lr"));
        assert_eq!(suggest("batchsize", &["root", "batch_size"]), Some("batch_size"));
        assert_eq!(suggest("zzzzzz", &["lr"]), None);
    }

    #[test]
    fn override_values_parse_as_toml() {
        let o = Override::parse("optimizer.lr=3e-4").unwrap();
        assert_eq!(o.value, toml::Value::Float(3e-4));
        assert_eq!(Override::parse("train.epochs=5").unwrap().value, toml::Value::Integer(5));
        assert_eq!(Override::parse("a.b=[1, 2]").unwrap().value.as_array().unwrap().len(), 2);
        assert_eq!(Override::parse("optimizer.kind=sgd").unwrap().value, toml::Value::String("sgd".into()));
        assert!(Override::parse("novalue").is_err());
    }

    #[test]
    fn set_path_walks_arrays() {
        let mut v: toml::Value = toml::from_str("layers = [\"relu\", { conv = { out = 6 } }]").unwrap();
        load::set_path(&mut v, &["layers", "1", "conv", "out"], toml::Value::Integer(8)).unwrap();
        assert_eq!(v["layers"][1]["conv"]["out"].as_integer(), Some(8));
        assert!(load::set_path(&mut v, &["layers", "5"], toml::Value::Integer(1)).is_err());
    }

    #[test]
    fn layers_round_trip_through_toml() {
        use schema::{LayerSpec, NodeSpec, ProjectSpec};
        let text = r#"layers = ["relu", { conv = { out = 6, kernel = 5 } }, "batch_norm", { dropout = 0.5 },
            { relu = {}, name = "act", from = "input" }, { add = ["act", "input"], project = "avg_conv" }]"#;
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Net {
            layers: Vec<NodeSpec>,
        }
        let net: Net = toml::from_str(text).unwrap();
        assert_eq!(net.layers[0], LayerSpec::Plain(crate::spec::LayerConfig::Relu).into());
        assert!(matches!(&net.layers[1].layer, LayerSpec::Conv(c) if c.out == schema::Int::Value(6)));
        assert_eq!((net.layers[4].name.as_deref(), net.layers[4].from.as_deref()), (Some("act"), Some("input")));
        assert_eq!(net.layers[5].layer, LayerSpec::Add(vec!["act".into(), "input".into()]));
        assert_eq!(net.layers[5].project, Some(ProjectSpec::Kind(crate::spec::Projection::AvgConv)));
        let written = toml::to_string(&net).unwrap();
        let again: Net = toml::from_str(&written).unwrap();
        assert_eq!(again.layers, net.layers, "{written}");
        let err = |t: &str| toml::from_str::<Net>(t).err().unwrap().to_string();
        assert!(err(r#"layers = [{ relu = { inplace = true } }]"#).contains("`relu` takes no settings"));
        assert!(err(r#"layers = ["rellu"]"#).contains("unknown variant `rellu`"));
        assert!(err(r#"layers = [{ conv = { out = 1, kernel = 1 }, linear = { out = 2 } }]"#).contains("one key"));
        assert!(err(r#"layers = [{ name = "x" }]"#).contains("invalid length 0"));
    }
}
