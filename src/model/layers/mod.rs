//! The layers, one kind per file, each a candle `Module` / `ModuleT` built from its spec, and
//! the walk that builds a graph of them in order (`graph.rs`), inferring each output shape and
//! naming parameters by path (`conv1.weight`, `layer1.0.bn2.running_var`, `fc.bias`).
//!
//! Adding a layer kind: a variant of `spec::LayerConfig` (and of the TOML's
//! `config::schema::LayerSpec`, which `resolve` maps to it), a file here with its module and
//! `build`, and its line in [`build_node`]'s match.

mod activation;
mod batch_norm;
mod conv;
mod dropout;
mod flatten;
mod graph;
mod linear;
mod merge;
mod pool;
mod relu;
mod relu6;
mod stage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_nn::ModuleT;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::ModelError;
use super::builder::{Builder, ConvInit};
use super::summary::{Summary, SummaryRow};
use crate::ops::norm::Fused;
use crate::spec::{LayerConfig, Node};
pub(super) use graph::GraphModule;
use graph::{GraphError, Op};

/// A built node: what it computes, its summary rows (a stage has one per block) and its
/// output shape.
pub(super) struct Built {
    pub op: Op,
    pub rows: Vec<SummaryRow>,
    pub out_shape: Vec<usize>,
}

/// Where the walk over a graph's nodes stands: what the node being built reads and is called.
pub(super) struct Walk<'w, 'a> {
    pub builder: &'w mut Builder<'a>,
    /// The shape of the node's (first) input, without the batch dimension.
    pub shape: Vec<usize>,
    /// Every input's shape (a merge has several).
    pub inputs: Vec<Vec<usize>>,
    /// The names of the nodes it reads, for errors (`input`, `conv3`).
    pub input_names: Vec<String>,
    /// Its position in `model.layers` (a block's nodes: their stage's): the summary row's index.
    pub index: usize,
    /// Its position in its own list (a block's nodes: in the template): what default row
    /// names are numbered by (`relu2`).
    pub position: usize,
    kind: &'static str,
    /// The node's `name`, when the file gives one.
    pub name: Option<String>,
    /// The activation that alone reads this node, for a BatchNorm (ReLU, ReLU6) or an add
    /// (ReLU) to compute in its pass.
    pub activation_follows: Fused,
    /// This ReLU was computed by the node before it.
    pub fused: bool,
    /// Default names handed out so far in this graph, per prefix (`conv`, `bn`, `fc`, `layer`).
    counts: &'w mut HashMap<&'static str, usize>,
    /// Linear nodes in this graph (one is named `fc`, several `fc1`, `fc2`, ...).
    linears: usize,
    pub dropout_rng: Arc<Mutex<ChaCha8Rng>>,
}

impl Walk<'_, '_> {
    /// The input as `(channels, height, width)`.
    pub fn spatial(&self) -> Result<(usize, usize, usize), String> {
        match self.shape[..] {
            [c, h, w] => Ok((c, h, w)),
            _ => Err(format!("expects a (channels, height, width) input, got {:?}", self.shape)),
        }
    }

    /// The next number for a default name with `prefix` (1-based).
    pub fn count(&mut self, prefix: &'static str) -> usize {
        let n = self.counts.entry(prefix).or_default();
        *n += 1;
        *n
    }

    /// The node's name, or the next default one: `<prefix><N>`.
    pub fn name_or(&mut self, prefix: &'static str) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{prefix}{}", self.count(prefix)),
        }
    }

    /// A linear node's name: its own, `fc` when the graph has one linear node, else `fc<N>`.
    pub fn linear_name(&mut self) -> String {
        let n = self.count("fc");
        match &self.name {
            Some(name) => name.clone(),
            None if self.linears == 1 => "fc".into(),
            None => format!("fc{n}"),
        }
    }

    /// A layer with parameters, its row named `name`.
    pub fn built(
        &self,
        module: Box<dyn ModuleT>,
        name: String,
        out_shape: Vec<usize>,
        params: usize,
        macs: u64,
    ) -> Built {
        let row = SummaryRow {
            index: self.index,
            kind: self.kind.into(),
            name,
            out_shape: out_shape.clone(),
            params,
            macs,
            inputs: Vec::new(),
            nodes: Vec::new(),
        };
        Built { op: Op::Layer(module), rows: vec![row], out_shape }
    }

    /// A parameter-free layer, its row named by the node or `<label><position>`.
    pub fn plain(&self, module: Box<dyn ModuleT>, label: &str, out_shape: Vec<usize>) -> Built {
        Built { op: Op::Layer(module), rows: vec![self.plain_row(label, &out_shape)], out_shape }
    }

    /// A parameter-free node's row, named by the node or `<label><position>`.
    pub fn plain_row(&self, label: &str, out_shape: &[usize]) -> SummaryRow {
        let mut row = SummaryRow::plain(self.index, self.kind, label, out_shape);
        row.name = self.name.clone().unwrap_or_else(|| format!("{label}{}", self.position));
        row
    }
}

/// A network as built, with every named tensor.
pub(super) struct Network {
    pub dropout_rng: Arc<Mutex<ChaCha8Rng>>,
    pub graph: GraphModule,
    pub summary: Summary,
}

/// Builds every node for `(c, h, w)` inputs into `b`, drawing weights in node order.
///
/// Names follow torchvision where the list has its shape: top-level convs `conv1`, `conv2`, ...,
/// BatchNorms `bn1`, ..., stages `layer1`, ... with blocks `layer1.0.conv1`, and a single
/// linear layer `fc` (several: `fc1`, `fc2`, ...); a node's `name` replaces its default.
pub(super) fn build(
    nodes: &[Node],
    (c, h, w): (usize, usize, usize),
    seed: u64,
    b: &mut Builder,
) -> Result<Network, ModelError> {
    // Dropout masks come from their own stream so adding dropout leaves the weights unchanged.
    let dropout_rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed.wrapping_add(0xD80))));
    let shape_error = |e: GraphError| ModelError::Shape { index: e.index, kind: e.kind, message: e.message };
    let built = graph::build(b, nodes, ("input", vec![c, h, w]), None, None, &dropout_rng).map_err(shape_error)?;
    if built.out_shape.len() != 1 {
        return Err(ModelError::Shape {
            index: nodes[nodes.len() - 1].written_at.unwrap_or(nodes.len() - 1),
            kind: nodes[nodes.len() - 1].layer.kind(),
            message: format!(
                "the network must end in (classes) logits, it ends in {:?}: add global_avg_pool or a linear layer",
                built.out_shape
            ),
        });
    }
    let mut summary = Summary::new(vec![c, h, w]);
    summary.rows = built.rows;
    Ok(Network { dropout_rng, graph: built.module, summary })
}

/// Builds `layer` on `walk`: the one match over layer kinds.
fn build_node(layer: &LayerConfig, walk: &mut Walk) -> Result<Built, String> {
    match layer {
        LayerConfig::Conv(c) => conv::build(c, walk),
        LayerConfig::Pool(p) => pool::build(p, walk),
        LayerConfig::GlobalAvgPool => pool::build_global(walk),
        LayerConfig::Relu => relu::build(walk),
        LayerConfig::Relu6 => relu6::build(walk),
        LayerConfig::Flatten => flatten::build(walk),
        LayerConfig::Linear(l) => linear::build(l, walk),
        LayerConfig::Dropout(p) => dropout::build(*p, walk),
        LayerConfig::Dropout2d(p) => dropout::build_2d(*p, walk),
        LayerConfig::StochasticDepth(p) => dropout::build_path(*p, walk),
        LayerConfig::Act(a) => activation::build(*a, walk),
        LayerConfig::AdaptiveAvgPool(hw) => pool::build_adaptive(*hw, walk),
        LayerConfig::DepthwiseConv(d) => conv::build_depthwise(d, walk),
        LayerConfig::BatchNorm => batch_norm::build(walk),
        LayerConfig::Stage(s) => stage::build(s, walk),
        LayerConfig::Add(p) => merge::build_add(*p, walk),
        LayerConfig::Concat => merge::build_concat(walk),
        LayerConfig::Mul => merge::build_mul(walk),
    }
}

/// Networks with residual stages or merges use torchvision's ResNet initialisation for every
/// conv; others PyTorch's layer defaults.
pub(super) fn conv_init(nodes: &[Node]) -> ConvInit {
    let residual = |n: &Node| matches!(n.layer, LayerConfig::Stage(_) | LayerConfig::Add(_));
    if nodes.iter().any(residual) { ConvInit::KaimingNormalFanOut } else { ConvInit::PyTorchDefault }
}
