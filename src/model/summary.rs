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
    /// A block's own nodes, named inside the block (`conv1`; `input` is the block's input).
    pub nodes: Vec<SummaryRow>,
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
            nodes: Vec::new(),
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

    /// The graph in Graphviz's language: one box per layer, a block's nodes in a box of
    /// their own, an edge from each node it reads (the one before, unless it names its inputs).
    pub fn to_dot(&self, title: &str) -> String {
        let mut out =
            format!("digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\"];\n", quote(title));
        out += &format!("  n0 [label=\"input\\n{}\", shape=oval];\n", shape(&self.input));
        let mut next = 1;
        dot_rows(&self.rows, 0, &mut next, &mut out);
        out + "}\n"
    }
}

/// `s` inside a Graphviz string.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Writes `rows` (reading node `input` first) as Graphviz nodes numbered from `next`;
/// returns the id of the last one.
fn dot_rows(rows: &[SummaryRow], input: usize, next: &mut usize, out: &mut String) -> usize {
    let mut ids: std::collections::HashMap<&str, usize> = [("input", input)].into();
    let mut last = input;
    for r in rows {
        let from: Vec<usize> = if r.inputs.is_empty() {
            vec![last]
        } else {
            r.inputs.iter().filter_map(|n| ids.get(n.as_str()).copied()).collect()
        };
        let label = format!("{}\\n{} {}", quote(&r.name), quote(&r.kind), shape(&r.out_shape));
        let params = if r.params > 0 { format!("\\n{} params", short(r.params as u64)) } else { String::new() };
        if r.nodes.is_empty() {
            let id = *next;
            *next += 1;
            *out += &format!("  n{id} [label=\"{label}{params}\"];\n");
            for f in from {
                *out += &format!("  n{f} -> n{id};\n");
            }
            last = id;
        } else {
            // A block: its nodes in a cluster, the block's input the node before it.
            *out += &format!("  subgraph cluster_{} {{\n  label=\"{label}{params}\";\n", *next);
            last = dot_rows(&r.nodes, from[0], next, out);
            *out += "  }\n";
        }
        ids.insert(&r.name, last);
    }
    last
}

fn shape(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(usize::to_string).collect();
    format!("({})", parts.join(", "))
}

impl fmt::Display for Summary {
    /// The table; with `{:#}`, each block's nodes under it, indented.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expand = f.alternate();
        let all: Vec<(usize, &SummaryRow)> = self
            .rows
            .iter()
            .flat_map(|r| std::iter::once((0, r)).chain(r.nodes.iter().filter(|_| expand).map(|n| (2, n))))
            .collect();
        // Columns as wide as their longest entry (torchvision-style names run long:
        // `features.denseblock1.denselayer1`); a `from` column when the graph is not a chain.
        let kind_w = all.iter().map(|(d, r)| d + r.kind.len()).max().unwrap_or(0).max(16);
        let name_w = all.iter().map(|(_, r)| r.name.len()).max().unwrap_or(0).max(10);
        let graph = all.iter().any(|(_, r)| !r.inputs.is_empty());
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
        for (depth, r) in all {
            let (index, kind) =
                (if depth == 0 { r.index.to_string() } else { String::new() }, format!("{:depth$}{}", "", r.kind));
            writeln!(
                f,
                "{:>3}  {:<kind_w$} {:<name_w$} {:<18} {:>14} {:>18}{}",
                index,
                kind,
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
