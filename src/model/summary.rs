//! Per-layer summary: output shape, parameters and multiply-adds, with exact totals.

use std::fmt;

use crate::units::{short, thousands};

/// One layer's line of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Position in `model.layers`.
    pub index: usize,
    /// The layer's kind as written (`conv`), or a stage's block template (`bottleneck`).
    pub kind: String,
    /// Parameter prefix (`conv1`, `fc`) or a positional name for parameter-free layers.
    pub name: String,
    /// Output shape without the batch dimension.
    pub out_shape: Vec<usize>,
    pub params: usize,
    /// Multiply-adds per image: conv = output elements x in/groups x kh x kw, linear = in x out.
    pub macs: u64,
    /// The rows whose outputs it reads, by name, when not just the row before (a merge, a
    /// layer with `from`).
    pub inputs: Vec<String>,
}

impl SummaryRow {
    /// A parameter-free layer's row.
    pub fn plain(index: usize, kind: &str, name: &str, out_shape: &[usize]) -> Self {
        Self {
            index,
            kind: kind.into(),
            name: format!("{name}{index}"),
            out_shape: out_shape.to_vec(),
            params: 0,
            macs: 0,
            inputs: Vec::new(),
        }
    }
}

/// The whole network's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub input: Vec<usize>,
    pub rows: Vec<SummaryRow>,
}

impl Summary {
    pub fn new(input: Vec<usize>) -> Self {
        Self { input, rows: Vec::new() }
    }
    pub fn total_params(&self) -> usize {
        self.rows.iter().map(|r| r.params).sum()
    }
    pub fn total_macs(&self) -> u64 {
        self.rows.iter().map(|r| r.macs).sum()
    }

    /// The graph in Graphviz's language: one box per row (a stage's blocks one each), an edge
    /// from each row it reads (the row before, unless it names its inputs).
    pub fn to_dot(&self, title: &str) -> String {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out =
            format!("digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\"];\n", quote(title));
        out += &format!("  n0 [label=\"input\\n{}\", shape=oval];\n", shape(&self.input));
        let mut ids: std::collections::HashMap<&str, usize> = [("input", 0)].into();
        for (i, r) in self.rows.iter().enumerate() {
            let id = i + 1;
            let params = if r.params > 0 { format!("\\n{} params", short(r.params as u64)) } else { String::new() };
            let label = format!("{}\\n{} {}{params}", quote(&r.name), quote(&r.kind), shape(&r.out_shape));
            out += &format!("  n{id} [label=\"{label}\"];\n");
            let from: Vec<usize> = if r.inputs.is_empty() {
                vec![i]
            } else {
                r.inputs.iter().filter_map(|n| ids.get(n.as_str()).copied()).collect()
            };
            for f in from {
                out += &format!("  n{f} -> n{id};\n");
            }
            ids.insert(&r.name, id);
        }
        out + "}\n"
    }
}

fn shape(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(usize::to_string).collect();
    format!("({})", parts.join(", "))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Columns as wide as their longest entry (torchvision-style names run long:
        // `features.denseblock1.denselayer1`); a `from` column when the graph is not a chain.
        let kind_w = self.rows.iter().map(|r| r.kind.len()).max().unwrap_or(0).max(16);
        let name_w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(10);
        let graph = self.rows.iter().any(|r| !r.inputs.is_empty());
        let from = |r: Option<&SummaryRow>| match r {
            Some(r) if graph => format!("  {}", r.inputs.join(", ")),
            None if graph => "  from".into(),
            _ => String::new(),
        };
        let header = from(None);
        writeln!(
            f,
            "{:>3}  {:<kind_w$} {:<name_w$} {:<18} {:>14} {:>18}{header}",
            "#", "kind", "name", "output", "params", "MACs"
        )?;
        writeln!(f, "{:>3}  {:<kind_w$} {:<name_w$} {:<18}", "", "input", "", shape(&self.input))?;
        for r in &self.rows {
            writeln!(
                f,
                "{:>3}  {:<kind_w$} {:<name_w$} {:<18} {:>14} {:>18}{}",
                r.index,
                r.kind,
                r.name,
                shape(&r.out_shape),
                thousands(r.params as u64),
                thousands(r.macs),
                from(Some(r)).trim_end()
            )?;
        }
        write!(
            f,
            "total: {} parameters ({}), {} multiply-adds per image ({})",
            thousands(self.total_params() as u64),
            short(self.total_params() as u64),
            thousands(self.total_macs()),
            short(self.total_macs())
        )
    }
}
