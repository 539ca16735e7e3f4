//! A graph of nodes, built and run in the order written: each node reads the node before it
//! or the nodes it names (`from`, a merge's inputs), so a residual, dense or squeeze-excite
//! block is a list with names in it. A list without names is the plain sequential network.
//!
//! Running keeps each value only until its last reader has run, and a ReLU that alone reads
//! a BatchNorm or an add (a ReLU6 that alone reads a BatchNorm) is computed by it: one fused
//! pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor};
use candle_nn::ModuleT;
use rand_chacha::ChaCha8Rng;

use super::{Walk, build_node};
use crate::model::builder::Builder;
use crate::model::summary::SummaryRow;
use crate::ops::norm::Fused;
use crate::spec::{LayerConfig, Node};

/// What a node computes.
pub(in crate::model) enum Op {
    /// A layer reading one input.
    Layer(Box<dyn ModuleT>),
    /// A layer reading several (add, concat, mul).
    Merge(Box<dyn Merge>),
    /// Its input unchanged: a ReLU the node before computed.
    Same,
}

/// A node reading several inputs.
pub(in crate::model) trait Merge {
    fn forward_t(&self, xs: &[&Tensor], train: bool) -> Result<Tensor>;
}

struct Step {
    op: Op,
    /// Values read: 0 is the graph's input, `k + 1` node `k`'s output.
    inputs: Vec<usize>,
    /// Values no later node reads, dropped once this one has run.
    release: Vec<usize>,
}

/// A built graph.
pub(in crate::model) struct GraphModule {
    steps: Vec<Step>,
    output: usize,
}

impl ModuleT for GraphModule {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut values: Vec<Option<Tensor>> = vec![None; self.steps.len() + 1];
        values[0] = Some(xs.clone());
        for (i, step) in self.steps.iter().enumerate() {
            let read = |v: &usize| values[*v].as_ref().expect("a value is kept until its last reader");
            let y = match &step.op {
                Op::Layer(m) => m.forward_t(read(&step.inputs[0]), train)?,
                Op::Merge(m) => m.forward_t(&step.inputs.iter().map(read).collect::<Vec<_>>(), train)?,
                Op::Same => read(&step.inputs[0]).clone(),
            };
            values[i + 1] = Some(y);
            for v in &step.release {
                values[*v] = None;
            }
        }
        Ok(values[self.output].take().expect("the output is never released"))
    }
}

/// A node that cannot be built: its position in the list, its kind, what is wrong.
#[derive(Debug)]
pub(in crate::model) struct GraphError {
    pub index: usize,
    pub kind: &'static str,
    pub message: String,
}

/// A graph as built, with one summary row per node (a stage: per block).
pub(in crate::model) struct BuiltGraph {
    pub module: GraphModule,
    pub rows: Vec<SummaryRow>,
    pub out_shape: Vec<usize>,
}

/// Who reads what, resolved from names before anything is built.
struct Wiring {
    inputs: Vec<Vec<usize>>,
    output: usize,
    /// Node `i` computes the activation that node `i + 1` is.
    fuse: Vec<Fused>,
    /// Each value's name, for errors.
    names: Vec<String>,
    /// The step after which each value is last read.
    last_read: Vec<Option<usize>>,
}

/// Resolves `nodes`' references: `input` names the graph's input; `output` its result
/// (default: the last node).
fn wire(nodes: &[Node], input: &str, output: Option<&str>) -> std::result::Result<Wiring, GraphError> {
    let err = |i: usize, message: String| GraphError { index: written(nodes, i), kind: nodes[i].layer.kind(), message };
    let mut by_name: HashMap<&str, usize> = HashMap::from([(input, 0)]);
    let mut names = vec![input.to_string()];
    let mut inputs = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let merge = matches!(node.layer, LayerConfig::Add(_) | LayerConfig::Concat | LayerConfig::Mul);
        if merge && node.from.len() < 2 {
            return Err(err(i, format!("a merge reads two or more named nodes, got {:?}", node.from)));
        }
        if matches!(node.layer, LayerConfig::Mul) && node.from.len() != 2 {
            return Err(err(i, format!("mul reads two nodes, [x, gate], got {:?}", node.from)));
        }
        if !merge && node.from.len() > 1 {
            return Err(err(i, format!("reads one node, got from = {:?}: merge them with add or concat", node.from)));
        }
        let mut read = Vec::new();
        for name in &node.from {
            let Some(&v) = by_name.get(name.as_str()) else {
                let later = nodes[i..].iter().any(|n| n.name.as_deref() == Some(name));
                let known: Vec<&str> = names.iter().map(String::as_str).filter(|n| by_name.contains_key(n)).collect();
                let why = if later { "is a later node: a node reads only earlier ones" } else { "names no node" };
                return Err(err(i, format!("`{name}` {why}; the nodes before it are named: {}", known.join(", "))));
            };
            read.push(v);
        }
        if read.is_empty() {
            read.push(i);
        }
        inputs.push(read);
        names.push(node.name.clone().unwrap_or_else(|| format!("layer {} ({})", written(nodes, i), node.layer.kind())));
        if let Some(name) = &node.name
            && by_name.insert(name, i + 1).is_some()
        {
            return Err(err(i, format!("two nodes are named `{name}`: names must be unique")));
        }
    }
    let output = match output {
        None => nodes.len(),
        Some(name) => *by_name.get(name).ok_or_else(|| {
            err(nodes.len() - 1, format!("the output `{name}` names no node; named: {}", names.join(", ")))
        })?,
    };
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len() + 1];
    for (i, read) in inputs.iter().enumerate() {
        for v in read {
            readers[*v].push(i);
        }
    }
    for (v, r) in readers.iter().enumerate() {
        if r.is_empty() && v != output {
            let (at, what) = if v == 0 { (0, "the input".to_string()) } else { (v - 1, format!("`{}`", names[v])) };
            return Err(err(at, format!("{what} is never read: no node reads it and it is not the output")));
        }
    }
    let fuse = (0..nodes.len())
        .map(|i| {
            let alone = readers[i + 1] == [i + 1] && output != i + 1;
            let next = nodes.get(i + 1).filter(|_| alone && inputs.get(i + 1) == Some(&vec![i + 1])).map(|n| &n.layer);
            match (&nodes[i].layer, next) {
                (LayerConfig::BatchNorm | LayerConfig::Add(_), Some(LayerConfig::Relu)) => Fused::Relu,
                (LayerConfig::BatchNorm, Some(LayerConfig::Relu6)) => Fused::Relu6,
                _ => Fused::None,
            }
        })
        .collect();
    let last_read = readers.iter().map(|r| r.iter().max().copied()).collect();
    Ok(Wiring { inputs, output, fuse, names, last_read })
}

/// Node `i`'s index in the list as written.
fn written(nodes: &[Node], i: usize) -> usize {
    nodes[i].written_at.unwrap_or(i)
}

/// Builds `nodes` reading an input called `input.0` of shape `input.1` into `b`; summary rows
/// carry `row_index` when given (a block's nodes: their stage's), else their own position.
pub(in crate::model) fn build(
    b: &mut Builder,
    nodes: &[Node],
    (input, shape): (&str, Vec<usize>),
    output: Option<&str>,
    row_index: Option<usize>,
    dropout_rng: &Arc<Mutex<ChaCha8Rng>>,
) -> std::result::Result<BuiltGraph, GraphError> {
    if nodes.is_empty() {
        return Err(GraphError { index: 0, kind: "graph", message: "has no layers".into() });
    }
    let wiring = wire(nodes, input, output)?;
    let mut shapes = vec![shape];
    // Each value's row name as the summary shows it: what a row's `inputs` name.
    let mut shown = vec![input.to_string()];
    let (mut steps, mut rows, mut counts) = (Vec::new(), Vec::new(), HashMap::new());
    let linears = nodes.iter().filter(|n| matches!(n.layer, LayerConfig::Linear(_))).count();
    for (i, node) in nodes.iter().enumerate() {
        let read = &wiring.inputs[i];
        let mut walk = Walk {
            builder: &mut *b,
            shape: shapes[read[0]].clone(),
            inputs: read.iter().map(|v| shapes[*v].clone()).collect(),
            input_names: read.iter().map(|v| wiring.names[*v].clone()).collect(),
            index: row_index.unwrap_or(written(nodes, i)),
            position: written(nodes, i),
            kind: node.layer.kind(),
            name: node.name.clone(),
            activation_follows: wiring.fuse[i],
            fused: i > 0 && wiring.fuse[i - 1] != Fused::None,
            counts: &mut counts,
            linears,
            dropout_rng: dropout_rng.clone(),
        };
        let mut built = build_node(&node.layer, &mut walk).map_err(|message| GraphError {
            index: written(nodes, i),
            kind: node.layer.kind(),
            message,
        })?;
        if let (false, Some(first)) = (node.from.is_empty(), built.rows.first_mut()) {
            first.inputs = read.iter().map(|v| shown[*v].clone()).collect();
        }
        shown.push(built.rows.last().map_or_else(|| shown[read[0]].clone(), |r| r.name.clone()));
        let release = (0..shapes.len()).filter(|v| *v != wiring.output && wiring.last_read[*v] == Some(i)).collect();
        shapes.push(built.out_shape);
        rows.extend(built.rows);
        steps.push(Step { op: built.op, inputs: read.clone(), release });
    }
    let out_shape = shapes[wiring.output].clone();
    Ok(BuiltGraph { module: GraphModule { steps, output: wiring.output }, rows, out_shape })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(layer: LayerConfig, name: &str, from: &[&str]) -> Node {
        let name = (!name.is_empty()).then(|| name.to_string());
        Node { layer, name, from: from.iter().map(|s| s.to_string()).collect(), written_at: None }
    }

    /// What the fused passes rest on: a ReLU (ReLU6) is computed by the BatchNorm (add) before
    /// it only when it alone reads it.
    #[test]
    fn activations_fuse_only_into_a_node_they_alone_read() {
        let relu6 = || node(LayerConfig::Relu6, "", &[]);
        let bn = |name: &str| node(LayerConfig::BatchNorm, name, &[]);
        let w = wire(&[bn(""), relu6(), bn(""), node(LayerConfig::Relu, "", &[])], "input", None).unwrap();
        assert_eq!(w.fuse, [Fused::Relu6, Fused::None, Fused::Relu, Fused::None]);
        // The BatchNorm's value is read again later (a shortcut): the ReLU6 stays its own pass.
        let add = node(LayerConfig::Add(None), "", &["a", "r"]);
        let w = wire(&[bn("a"), node(LayerConfig::Relu6, "r", &[]), add.clone()], "input", None).unwrap();
        assert_eq!(w.fuse, [Fused::None, Fused::None, Fused::None]);
        // An add fuses a ReLU, not a ReLU6; a ReLU reading another node does not fuse.
        let w = wire(&[bn("a"), bn("b"), node(LayerConfig::Add(None), "", &["a", "b"]), relu6()], "input", None);
        assert_eq!(w.unwrap().fuse, [Fused::None, Fused::None, Fused::None, Fused::None]);
        let sum = node(LayerConfig::Add(None), "", &["a", "r"]);
        let w = wire(&[bn("a"), node(LayerConfig::Relu, "r", &["input"]), sum], "input", None).unwrap();
        assert_eq!(w.fuse, [Fused::None, Fused::None, Fused::None]);
    }
}
