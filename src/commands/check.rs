//! `ablate check`: the plan, printed; nothing is written.

use crate::plan::{self, Request};

/// Each variant's validated per-layer summary (one table without a sweep), and, as the
/// second result so the summaries show either way, the `model.init` / `model.freeze` report
/// or the first problem with them.
pub fn check(request: &Request) -> anyhow::Result<(String, anyhow::Result<Option<String>>)> {
    let plan = plan::plan(request)?;
    let file = request.files.first().map_or_else(String::new, |f| f.display().to_string());
    let mut text = Vec::new();
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
            v.summary
        ));
    }
    let init = plan.check_init().map(|()| {
        let mut reports: Vec<&str> = plan.variants.iter().filter_map(|v| v.init.as_ref().ok()?.as_deref()).collect();
        reports.dedup(); // a sweep's variants usually import alike
        (!reports.is_empty()).then(|| reports.join("\n"))
    });
    Ok((text.join("\n\n"), init))
}
