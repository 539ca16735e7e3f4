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
}

fn shape(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(usize::to_string).collect();
    format!("({})", parts.join(", "))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:>3}  {:<16} {:<10} {:<18} {:>14} {:>18}", "#", "kind", "name", "output", "params", "MACs")?;
        writeln!(f, "{:>3}  {:<16} {:<10} {:<18}", "", "input", "", shape(&self.input))?;
        for r in &self.rows {
            writeln!(
                f,
                "{:>3}  {:<16} {:<10} {:<18} {:>14} {:>18}",
                r.index,
                r.kind,
                r.name,
                shape(&r.out_shape),
                thousands(r.params as u64),
                thousands(r.macs)
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
