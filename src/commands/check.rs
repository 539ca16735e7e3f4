//! `ablate check`: the plan, printed; nothing is written but the graph files asked for.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::plan::{self, Request};

/// What `ablate check` shows besides the summary: with `nodes`, each block's own nodes under
/// it; `dot`, where to write the model graph (itself for one variant; for a sweep, one file
/// per variant: `graph.dot` -> `graph.<variant>.dot`); with `png`, each also drawn by
/// Graphviz's `dot`.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub nodes: bool,
    pub dot: Option<PathBuf>,
    pub png: bool,
}

/// Each variant's validated per-layer summary (one table without a sweep), and, as the
/// second result so the summaries show either way, the `model.init` / `model.freeze` report
/// or the first problem with them.
pub fn check(request: &Request, graph: &CheckOptions) -> anyhow::Result<(String, anyhow::Result<Option<String>>)> {
    let plan = plan::plan(request)?;
    let file = request.files.first().map_or_else(String::new, |f| f.display().to_string());
    let mut text = Vec::new();
    if graph.png && graph.dot.is_none() {
        anyhow::bail!("--png draws the --dot file: give --dot <file.dot> too");
    }
    if let Some(dot) = &graph.dot {
        let single = plan.variants.len() == 1;
        for v in &plan.variants {
            let path = if single { dot.clone() } else { per_variant(dot, &v.folder) };
            let title = if single { file.clone() } else { format!("{file} {}", v.folder) };
            write_graph(&path, &v.summary.to_dot(&title), graph.png)?;
        }
    }
    for v in &plan.variants {
        let label = if v.folder == "." { String::new() } else { format!("variant {}: ", v.folder) };
        let spec = &v.spec;
        text.push(format!(
            "{label}{file}: {} classes ({}), {} labelled images, input 3x{}x{}\n{}",
            spec.num_classes(),
            spec.class_names.join(", "),
            v.items.len(),
            spec.input_hw.0,
            spec.input_hw.1,
            if graph.nodes { format!("{:#}", v.summary) } else { v.summary.to_string() }
        ));
    }
    let init = plan.check_init().map(|()| {
        let mut reports: Vec<&str> = plan.variants.iter().filter_map(|v| v.init.as_ref().ok()?.as_deref()).collect();
        reports.dedup(); // a sweep's variants usually import alike
        (!reports.is_empty()).then(|| reports.join("\n"))
    });
    Ok((text.join("\n\n"), init))
}

/// `graph.dot` for variant `groups=4/r1`: `graph.groups=4_r1.dot`.
fn per_variant(dot: &Path, variant: &str) -> PathBuf {
    let safe: String =
        variant.chars().map(|c| if c.is_ascii_alphanumeric() || "=.-+".contains(c) { c } else { '_' }).collect();
    let stem = dot.file_stem().map_or_else(|| "graph".into(), |s| s.to_string_lossy().into_owned());
    dot.with_file_name(format!("{stem}.{safe}.dot"))
}

/// Writes `text` to `path` (refusing to replace a file that is not a Graphviz file), and with
/// `png` draws it beside it.
fn write_graph(path: &Path, text: &str, png: bool) -> anyhow::Result<()> {
    if path.extension().is_none_or(|e| e != "dot") {
        anyhow::bail!("--dot {}: expected a file name ending in .dot", path.display());
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if png {
        let out = path.with_extension("png");
        let status = std::process::Command::new("dot")
            .arg("-Tpng")
            .arg(path)
            .arg("-o")
            .arg(&out)
            .status()
            .context("--png needs Graphviz's `dot` on PATH (apt-get install graphviz)")?;
        anyhow::ensure!(status.success(), "dot -Tpng {} failed ({status})", path.display());
    }
    Ok(())
}
