//! `stage`: `repeat` blocks made from one block template (the residual blocks of He et al.
//! 2015 and ResNeXt, Xie et al. 2016, are the templates `basic` and `bottleneck` in
//! `experiments/_blocks.toml`), the first with the stage's stride; parameters named
//! `layer<N>.<block>.<node>` as torchvision names them.

use candle_core::{Result, Tensor};
use candle_nn::ModuleT;

use super::graph::{self, GraphModule, Op};
use super::{Built, Walk};
use crate::model::summary::SummaryRow;
use crate::spec::StageConfig;

/// A stage's blocks in order.
struct Blocks(Vec<GraphModule>);

impl ModuleT for Blocks {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.0.iter().try_fold(xs.clone(), |x, block| block.forward_t(&x, train))
    }
}

/// Builds stage `layer<N>` (unless named): blocks `layer<N>.0`, `layer<N>.1`, ... (or as its
/// `names` pattern says), one summary row each (kind: the template's name).
pub(super) fn build(s: &StageConfig, walk: &mut Walk) -> std::result::Result<Built, String> {
    let name = walk.name_or("layer");
    let pattern = s.names.clone().unwrap_or_else(|| format!("{name}.{{}}"));
    let (mut shape, mut blocks, mut rows) = (walk.shape.clone(), Vec::new(), Vec::new());
    for i in 0..s.repeat {
        let scope_name = pattern.replace("{}", &(s.start + i).to_string());
        let at = |message: String| format!("{scope_name} (block `{}`): {message}", s.block);
        let block = s.blocks.instantiate(i, &shape).map_err(at)?;
        let mut scope = walk.builder.pp(scope_name.clone());
        let built = graph::build(
            &mut scope,
            &block.nodes,
            (&block.input, shape.clone()),
            block.output.as_deref(),
            Some(walk.index),
            &walk.dropout_rng,
        )
        .map_err(|e| at(format!("its layer {} ({}): {}", e.index, e.kind, e.message)))?;
        rows.push(SummaryRow {
            index: walk.index,
            kind: s.block.clone(),
            name: scope_name.clone(),
            out_shape: built.out_shape.clone(),
            params: built.rows.iter().map(|r| r.params).sum(),
            macs: built.rows.iter().map(|r| r.macs).sum(),
            inputs: Vec::new(),
            nodes: built.rows,
        });
        shape = built.out_shape;
        blocks.push(built.module);
    }
    Ok(Built { op: Op::Layer(Box::new(Blocks(blocks))), rows, out_shape: shape })
}
