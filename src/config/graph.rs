//! The model graph as validated: `model.layers`' nodes (names, `from`, merges) and the block
//! templates stages make their blocks from.
//!
//! A template is kept as TOML until a block is made: its parameters' values depend on the
//! block's input (`$in`) and position (the stride on the first block only), which only the
//! model knows. `resolve` checks what it can before anything is built (the template exists,
//! the stage names only its parameters and gives the required ones, no template contains
//! itself); the model calls the [`BlockSource`] it gets for each block, and errors then name
//! the template's layer.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::ConfigError;
use super::at::{At, OwnedAt};
use super::expr;
use super::schema::{BlockTemplate, LayerSpec, NodeSpec, PoolSpec, ProjectSpec, StageSpec};
use crate::ops::params::{ConvParams, PoolKind, PoolParams};
use crate::spec::{
    BlockGraph, BlockSource, ConvConfig, DepthwiseConfig, LayerConfig, LinearConfig, Node, Projection, StageConfig,
};

/// The shipped templates (`basic`, `bottleneck`): the file an experiment may also `extends`.
/// A file's own `[model.blocks]` entries replace them by name.
const SHIPPED: &str = include_str!("../../experiments/_blocks.toml");

/// The templates a file can use: its own, then the shipped ones.
pub fn library(own: &BTreeMap<String, BlockTemplate>) -> Result<BTreeMap<String, BlockTemplate>, String> {
    #[derive(Deserialize)]
    struct File {
        model: Model,
    }
    #[derive(Deserialize)]
    struct Model {
        blocks: BTreeMap<String, BlockTemplate>,
    }
    let shipped: File = toml::from_str(SHIPPED).map_err(|e| format!("experiments/_blocks.toml: {e}"))?;
    let mut all = shipped.model.blocks;
    all.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(all)
}

/// The templates `layers`' stages make blocks of, and those these do, by name.
pub fn used(layers: &[NodeSpec], blocks: &BTreeMap<String, BlockTemplate>) -> BTreeMap<String, BlockTemplate> {
    let mut todo: Vec<String> = layers
        .iter()
        .filter_map(|n| match &n.layer {
            LayerSpec::Stage(st) => Some(st.block.clone()),
            _ => None,
        })
        .collect();
    let mut found = BTreeMap::new();
    while let Some(name) = todo.pop() {
        let Some(t) = blocks.get(&name) else { continue };
        if found.insert(name, t.clone()).is_none() {
            todo.extend(t.layers.iter().filter_map(inner_block).map(str::to_string));
        }
    }
    found
}

/// The template a raw template layer's stage names.
fn inner_block(layer: &toml::Value) -> Option<&str> {
    layer.get("stage")?.get("block")?.as_str()
}

/// Node `key` (`model.layers.3`) validated; `None` when its `if` does not hold.
pub fn node(spec: &NodeSpec, key: &str, at: &At) -> Result<Option<Node>, ConfigError> {
    let written_at = key.rsplit('.').next().and_then(|i| i.parse().ok());
    let kind = |k: &str| format!("{key}.{k}");
    if let Some(when) = &spec.when
        && !holds(when, at).map_err(|m| at.invalid(&kind("if"), m))?
    {
        return Ok(None);
    }
    let (layer, inner_name, merge_from) = match &spec.layer {
        LayerSpec::Conv(c) => (conv(c, &kind("conv"), at)?, c.name.clone(), None),
        LayerSpec::MaxPool(p) => (pool(p, PoolKind::Max, &kind("max_pool"), at)?, None, None),
        LayerSpec::AvgPool(p) => (pool(p, PoolKind::Avg, &kind("avg_pool"), at)?, None, None),
        LayerSpec::Plain(plain) => (plain.clone(), None, None),
        LayerSpec::Linear(l) => {
            let out = at.positive(&l.out, &kind("linear.out"))?;
            (LayerConfig::Linear(LinearConfig { out, bias: l.bias.unwrap_or(true) }), l.name.clone(), None)
        }
        LayerSpec::Dropout(p) => {
            if !(0.0..1.0).contains(p) {
                return Err(at.invalid(&kind("dropout"), format!("expected a probability in [0, 1), got {p}")));
            }
            (LayerConfig::Dropout(*p), None, None)
        }
        LayerSpec::Dropout2d(p) | LayerSpec::StochasticDepth(p) => {
            let what = if matches!(spec.layer, LayerSpec::Dropout2d(_)) { "dropout2d" } else { "stochastic_depth" };
            if !(0.0..1.0).contains(p) {
                return Err(at.invalid(&kind(what), format!("expected a probability in [0, 1), got {p}")));
            }
            let layer = if what == "dropout2d" { LayerConfig::Dropout2d(*p) } else { LayerConfig::StochasticDepth(*p) };
            (layer, None, None)
        }
        LayerSpec::AdaptiveAvgPool([h, w]) => {
            let hw = (at.positive(h, &kind("adaptive_avg_pool"))?, at.positive(w, &kind("adaptive_avg_pool"))?);
            (LayerConfig::AdaptiveAvgPool(hw), None, None)
        }
        LayerSpec::DepthwiseConv(c) => (depthwise(c, &kind("depthwise_conv"), at)?, None, None),
        LayerSpec::Stage(st) => (stage(st, &kind("stage"), at)?, st.name.clone(), None),
        LayerSpec::Add(from) => (LayerConfig::Add(projection(spec.project)), None, Some(from)),
        LayerSpec::Concat(from) => (LayerConfig::Concat, None, Some(from)),
        LayerSpec::Mul(from) => (LayerConfig::Mul, None, Some(from)),
    };
    if spec.project.is_some() && !matches!(layer, LayerConfig::Add(_)) {
        return Err(at.invalid(&kind("project"), "only an add projects its inputs".into()));
    }
    let name = match (&spec.name, inner_name) {
        (Some(a), Some(b)) => {
            let message = format!("named twice, `{a}` and `{b}` in its settings: keep one");
            return Err(at.invalid(&kind("name"), message));
        }
        (a, b) => a.clone().or(b),
    };
    if name.as_deref().is_some_and(|n| n.split('.').any(str::is_empty)) {
        return Err(at.invalid(&kind("name"), "expected a name (dots only between its parts: `features.0.0`)".into()));
    }
    let from = match (merge_from, &spec.from) {
        (Some(_), Some(_)) => {
            let message = format!("a merge names its inputs in its list: drop `from` from {}", layer.kind());
            return Err(at.invalid(&kind("from"), message));
        }
        (Some(list), None) => list.clone(),
        (None, from) => from.iter().cloned().collect(),
    };
    Ok(Some(Node { layer, name, from, written_at }))
}

/// Whether an `if` holds: a boolean, a whole number (0 is false) or a `$` condition.
fn holds(when: &toml::Value, at: &At) -> Result<bool, String> {
    match when {
        toml::Value::Boolean(b) => Ok(*b),
        toml::Value::Integer(i) => Ok(*i != 0),
        toml::Value::String(s) if s.contains('$') => match substitute(when, &|n| at.outer(n))? {
            toml::Value::Integer(i) => Ok(i != 0),
            toml::Value::Boolean(b) => Ok(b),
            other => Err(format!("\"{s}\" is {other}: expected a condition")),
        },
        other => Err(format!("expected true, false or a \"$\" condition, got {other}")),
    }
}

fn projection(p: Option<ProjectSpec>) -> Option<Projection> {
    match p? {
        ProjectSpec::On(true) => Some(Projection::Conv),
        ProjectSpec::On(false) => None,
        ProjectSpec::Kind(k) => Some(k),
    }
}

fn conv(c: &super::schema::ConvSpec, key: &str, at: &At) -> Result<LayerConfig, ConfigError> {
    let field = |f: &str| format!("{key}.{f}");
    Ok(LayerConfig::Conv(ConvConfig {
        out: at.positive(&c.out, &field("out"))?,
        kernel: at.positive(&c.kernel, &field("kernel"))?,
        params: ConvParams {
            stride: at.positive_or(&c.stride, &field("stride"), 1)?,
            padding: c.padding.as_ref().map(|v| at.int(v, &field("padding"))).transpose()?.unwrap_or(0),
            dilation: at.positive_or(&c.dilation, &field("dilation"), 1)?,
            groups: at.positive_or(&c.groups, &field("groups"), 1)?,
        },
        bias: c.bias.unwrap_or(true),
    }))
}

fn depthwise(c: &super::schema::DepthwiseSpec, key: &str, at: &At) -> Result<LayerConfig, ConfigError> {
    let field = |f: &str| format!("{key}.{f}");
    Ok(LayerConfig::DepthwiseConv(DepthwiseConfig {
        multiplier: at.positive_or(&c.multiplier, &field("multiplier"), 1)?,
        kernel: at.positive(&c.kernel, &field("kernel"))?,
        params: ConvParams {
            stride: at.positive_or(&c.stride, &field("stride"), 1)?,
            padding: c.padding.as_ref().map(|v| at.int(v, &field("padding"))).transpose()?.unwrap_or(0),
            dilation: at.positive_or(&c.dilation, &field("dilation"), 1)?,
            groups: 1,
        },
        bias: c.bias.unwrap_or(true),
    }))
}

/// A pooling layer whose settings are under `key`.
fn pool(p: &PoolSpec, kind: PoolKind, key: &str, at: &At) -> Result<LayerConfig, ConfigError> {
    let k = at.positive(&p.kernel, &format!("{key}.kernel"))?;
    let s = at.positive_or(&p.stride, &format!("{key}.stride"), k)?;
    let pad = p.padding.as_ref().map(|v| at.int(v, &format!("{key}.padding"))).transpose()?.unwrap_or(0);
    if pad * 2 > k {
        return Err(at.invalid(&format!("{key}.padding"), format!("expected at most half the kernel ({k}), got {pad}")));
    }
    Ok(LayerConfig::Pool(PoolParams { kind, kernel: (k, k), stride: (s, s), padding: (pad, pad) }))
}

/// A stage under `key`: its template found and its arguments checked against the template's
/// parameters; `$name` arguments take `model.params`' values now.
fn stage(st: &StageSpec, key: &str, at: &At) -> Result<LayerConfig, ConfigError> {
    let Some(template) = at.blocks.get(&st.block) else {
        let names: Vec<&str> = at.blocks.keys().map(String::as_str).collect();
        let hint = super::suggest(&st.block, &names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
        let message = format!(
            "no block template `{}`{hint}; templates: {} (or add [model.blocks.{}])",
            st.block,
            names.join(", "),
            st.block
        );
        return Err(at.invalid(&format!("{key}.block"), message));
    };
    contains_itself(&st.block, at.blocks, &mut Vec::new()).map_err(|m| at.invalid(&format!("{key}.block"), m))?;
    let known: Vec<&str> = template.required.iter().chain(template.params.keys()).map(String::as_str).collect();
    let mut args = BTreeMap::new();
    for (name, value) in &st.args {
        if !known.contains(&name.as_str()) || name == "in" {
            // `flatten` takes every key the stage does not name; a misspelt stage key (`repet`)
            // lands here too, so the hint looks at those as well.
            let keys: Vec<&str> = known.iter().copied().chain(["repeat", "name", "names", "start"]).collect();
            let hint = super::suggest(name, &keys).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
            let message =
                format!("block `{}` has no parameter `{name}`{hint}; its parameters: {}", st.block, known.join(", "));
            return Err(at.invalid(&format!("{key}.{name}"), message));
        }
        let value = substitute(value, &|n| at.outer(n)).map_err(|m| at.invalid(&format!("{key}.{name}"), m))?;
        if let toml::Value::Table(t) = &value
            && ramp(&value).is_none()
        {
            let keys: Vec<&String> = t.keys().collect();
            let message =
                format!("a table argument is a ramp, {{ ramp = [first, last] }} (numbers), got keys {keys:?}");
            return Err(at.invalid(&format!("{key}.{name}"), message));
        }
        args.insert(name.clone(), value);
    }
    if let Some(missing) = template.required.iter().find(|r| !args.contains_key(*r)) {
        return Err(at.invalid(key, format!("block `{}` needs `{missing}`", st.block)));
    }
    let describe = format!("{} {}", st.block, toml::Value::Table(args.clone().into_iter().collect()));
    let owned = Arc::new(at.owned());
    let (block, template) = (st.block.clone(), template.clone());
    let repeat = at.positive_or(&st.repeat, &format!("{key}.repeat"), 1)?;
    let make = move |i: usize, shape: &[usize]| instantiate(&block, &template, &args, (i, repeat), shape, &owned);
    if st.names.as_ref().is_some_and(|n| !n.contains("{}")) {
        return Err(at.invalid(&format!("{key}.names"), "expected a pattern with `{}` for the block's number".into()));
    }
    Ok(LayerConfig::Stage(StageConfig {
        block: st.block.clone(),
        repeat,
        names: st.names.clone(),
        start: st.start.as_ref().map(|v| at.int(v, &format!("{key}.start"))).transpose()?.unwrap_or(0),
        blocks: BlockSource::new(describe, Arc::new(make)),
    }))
}

/// Fails when template `name` makes, through its stages, a block of itself.
fn contains_itself(name: &str, blocks: &BTreeMap<String, BlockTemplate>, path: &mut Vec<String>) -> Result<(), String> {
    if path.iter().any(|p| p == name) {
        path.push(name.into());
        return Err(format!("block templates contain each other: {}", path.join(" -> ")));
    }
    let Some(template) = blocks.get(name) else { return Ok(()) };
    path.push(name.into());
    for inner in template.layers.iter().filter_map(inner_block) {
        contains_itself(inner, blocks, path)?;
    }
    path.pop();
    Ok(())
}

/// `{ ramp = [first, last] }`: an argument that goes linearly from `first` on a stage's first
/// block to `last` on its last (a drop-path rate growing with depth).
fn ramp(v: &toml::Value) -> Option<(f64, f64)> {
    let t = v.as_table().filter(|t| t.len() == 1)?;
    let ends = t.get("ramp")?.as_array().filter(|a| a.len() == 2)?;
    let number = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    Some((number(&ends[0])?, number(&ends[1])?))
}

/// Block `index` of the `count` of a stage of `block` for inputs of `shape`: the parameters
/// bound (`$in` the input's channels; the stride 1 after the first block; a ramp at this
/// block's point), then every layer's `$name` replaced and the layer validated as
/// model.layers' are.
fn instantiate(
    block: &str,
    template: &BlockTemplate,
    args: &BTreeMap<String, toml::Value>,
    (index, count): (usize, usize),
    shape: &[usize],
    owned: &OwnedAt,
) -> Result<BlockGraph, String> {
    let at = owned.at();
    let mut raw = template.params.clone();
    let along = if count > 1 { index as f64 / (count - 1) as f64 } else { 0.0 };
    raw.extend(args.iter().map(|(k, v)| {
        let v = ramp(v).map_or_else(|| v.clone(), |(a, b)| toml::Value::Float(a + (b - a) * along));
        (k.clone(), v)
    }));
    if index > 0 && raw.contains_key("stride") {
        raw.insert("stride".into(), toml::Value::Integer(1));
    }
    let channels = shape.first().copied().unwrap_or(0);
    raw.insert("in".into(), toml::Value::Integer(channels as i64));
    let bound = bind(raw, &|n| at.outer(n)).map_err(|m| format!("model.blocks.{block}.params: {m}"))?;
    let lookup = |n: &str| bound.get(n).cloned().or_else(|| at.outer(n));
    let mut nodes = Vec::with_capacity(template.layers.len());
    for (j, layer) in template.layers.iter().enumerate() {
        let key = format!("model.blocks.{block}.layers.{j}");
        let value = substitute(layer, &lookup).map_err(|m| format!("{key}: {m}"))?;
        let spec = NodeSpec::deserialize(value).map_err(|e| format!("{key}: {e}"))?;
        nodes.extend(node(&spec, &key, &at).map_err(|e| match e {
            ConfigError::Invalid { key, message, .. } => format!("{key}: {message}"),
            other => other.to_string(),
        })?);
    }
    Ok(BlockGraph { nodes, input: template.input.clone(), output: template.output.clone() })
}

/// Gives every parameter a value without `$`: each default or argument may refer to the
/// others (in any order, without cycles) and to `outer` names.
fn bind(
    mut pending: BTreeMap<String, toml::Value>,
    outer: &dyn Fn(&str) -> Option<toml::Value>,
) -> Result<BTreeMap<String, toml::Value>, String> {
    let mut done = BTreeMap::new();
    while !pending.is_empty() {
        let ready: Vec<String> = pending
            .iter()
            .filter(|(_, v)| references(v).iter().all(|r| !pending.contains_key(r)))
            .map(|(k, _)| k.clone())
            .collect();
        if ready.is_empty() {
            let names: Vec<&str> = pending.keys().map(String::as_str).collect();
            return Err(format!("parameters refer to each other in a cycle: {}", names.join(", ")));
        }
        for name in ready {
            let raw = pending.remove(&name).expect("ready is pending");
            let lookup = |n: &str| done.get(n).cloned().or_else(|| outer(n));
            let value = substitute(&raw, &lookup).map_err(|m| format!("`{name}`: {m}"))?;
            done.insert(name, value);
        }
    }
    Ok(done)
}

/// The `$name`s a value's strings refer to.
fn references(v: &toml::Value) -> Vec<String> {
    match v {
        toml::Value::String(s) => s
            .split('$')
            .skip(1)
            .map(|rest| rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
            .collect(),
        toml::Value::Array(a) => a.iter().flat_map(references).collect(),
        toml::Value::Table(t) => t.values().flat_map(references).collect(),
        _ => Vec::new(),
    }
}

/// `v` with every string that holds a `$` replaced: `"$name"` by the value `lookup` gives
/// (of any type), any other (`"$out / 4"`) by the whole number it evaluates to.
fn substitute(v: &toml::Value, lookup: &dyn Fn(&str) -> Option<toml::Value>) -> Result<toml::Value, String> {
    Ok(match v {
        toml::Value::String(s) if s.contains('$') => {
            let name = s.strip_prefix('$').filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            if let Some(name) = name {
                return lookup(name).ok_or_else(|| format!("`${name}` is not defined"));
            }
            let mut int = |n: &str| match lookup(n) {
                Some(toml::Value::Integer(i)) => Ok(i),
                Some(other) => Err(format!("`${n}` is {other}, not a whole number")),
                None => Err(format!("`${n}` is not defined")),
            };
            toml::Value::Integer(expr::eval(s, &mut int)?)
        }
        toml::Value::Array(a) => toml::Value::Array(a.iter().map(|x| substitute(x, lookup)).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => toml::Value::Table(
            t.iter().map(|(k, x)| Ok((k.clone(), substitute(x, lookup)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}
