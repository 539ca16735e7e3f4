//! The model graph written in the file: named nodes, merges and block templates. A block
//! defined only in TOML trains; the README's worked example builds as it says; every mistake
//! is refused naming the node (or template layer) before a run folder exists.

use std::path::Path;

use ablate::Model;
use candle_core::Device;
use predicates::prelude::*;

use crate::common::{color_folder, experiment, only_run, run_in};

/// A pre-activation basic block (He et al. 2016, "Identity Mappings in Deep Residual
/// Networks"): BatchNorm and ReLU before each conv, nothing after the sum. ablate ships no
/// such block: it exists only in this TOML.
const PREACT: &str = r#"
[model.blocks.preact]
required = ["out"]
params = { stride = 1 }
layers = [
  { batch_norm = {}, name = "bn1" }, "relu",
  { conv = { out = "$out", kernel = 3, stride = "$stride", padding = 1, bias = false }, name = "conv1" },
  { batch_norm = {}, name = "bn2" }, "relu",
  { conv = { out = "$out", kernel = 3, padding = 1, bias = false }, name = "conv2" },
  { add = ["conv2", "input"], project = true },
]
"#;

const PREACT_NET: &str = r#"layers = [
  { conv = { out = 8, kernel = 3, padding = 1, bias = false } },
  { stage = { block = "preact", repeat = 2, out = 16, stride = 2 } },
  "batch_norm", "relu", "global_avg_pool",
  { linear = { out = "$classes" } },
]"#;

/// A temporary folder with a colour-folder dataset (`per_class`, `test`, `seed`) and the tiny
/// experiment on it for `epochs`.
fn tiny((per_class, test, seed): (usize, usize, u64), epochs: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, per_class, test, seed);
    let exp = experiment(tmp.path(), &data, epochs);
    (tmp, exp)
}

/// The experiment's spec (classes `blue`, `red`) and its model, seed 0.
fn built(exp: &Path) -> (ablate::Spec, Model) {
    let spec = ablate::spec_from_file(exp, &[], &["blue", "red"]).unwrap();
    let model = Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap();
    (spec, model)
}

/// The tiny experiment with its layers replaced by `layers` (a `layers = [...]` line) and
/// `tables` appended.
fn with_graph(exp: &Path, layers: &str, tables: &str) {
    let text = std::fs::read_to_string(exp).unwrap();
    let start = text.find("layers = [").unwrap();
    let end = start + text[start..].find("]\n\n").unwrap() + 1;
    std::fs::write(exp, format!("{}{layers}{}{tables}", &text[..start], &text[end..])).unwrap();
}

#[test]
fn a_block_written_only_in_toml_builds_by_name_and_trains() {
    let (tmp, exp) = tiny((8, 2, 5), 2);
    with_graph(&exp, PREACT_NET, PREACT);

    let (spec, model) = built(&exp);
    let names: Vec<String> = model.params().into_iter().map(|(k, _)| k).collect();
    // Only the first block changes shape (8 -> 16 channels, stride 2): only it projects.
    for want in
        ["layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight", "layer1.1.conv2.weight"]
    {
        assert!(names.contains(&want.to_string()), "no {want} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("layer1.1.downsample")), "{names:?}");
    let rows = &model.summary().rows;
    let block = |i: usize| rows.iter().find(|r| r.name == format!("layer1.{i}")).unwrap();
    assert_eq!((block(0).kind.as_str(), &block(0).out_shape[..]), ("preact", &[16, 8, 8][..]));
    // Block 0: bn1 2*8, conv1 8*16*9, bn2 2*16, conv2 16*16*9, projection 8*16 + bn 2*16.
    assert_eq!(block(0).params, 16 + 1152 + 32 + 2304 + 128 + 32);
    assert_eq!(block(1).params, 32 + 2304 + 32 + 2304);

    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).assert().success();
    let run = only_run(&runs);
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "a header and two epochs:\n{metrics}");
    // The run's config stands alone: it holds the template, and builds the same model.
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("[model.blocks.preact]"), "{config}");
    let again = ablate::spec_from_file(&run.join("config.toml"), &[], &["blue", "red"]).unwrap();
    assert_eq!(again.layers, spec.layers);
}

/// The README's worked example (the squeeze-excite block) is the file it shows: its TOML
/// builds, and its counts are what the README says.
#[test]
fn the_readme_squeeze_excite_example_builds_as_documented() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("<!-- se-example -->").expect("README marks its SE example") + "<!-- se-example -->".len();
    let block = &readme[start..];
    let toml = &block[block.find("```toml\n").unwrap() + 8..];
    let toml = &toml[..toml.find("```").unwrap()];
    let (_tmp, exp) = tiny((4, 1, 5), 1);
    let (layers, tables) = toml.split_at(toml.find("\n[").unwrap());
    with_graph(&exp, layers.trim_start().trim_start_matches("[model]\n"), tables);
    let (_, model) = built(&exp);
    let total = model.summary().total_params();
    // The count the paragraph before the example states: "... 175,250 parameters ...".
    let before = &readme[..start];
    let claimed = &before[..before.rfind(" parameters").unwrap()];
    let claimed: String = claimed.rsplit(' ').next().unwrap().chars().filter(char::is_ascii_digit).collect();
    assert_eq!(total.to_string(), claimed, "the README's parameter count");
    assert!(model.params().iter().any(|(k, _)| k == "layer1.0.se_reduce.weight"));
}

/// `ablate run` with `--set model.layers=<layers>` (and `tables` appended) fails before a run
/// folder exists, its message holding every needle.
fn refused(layers: &str, tables: &str, needles: &[&str]) {
    let (tmp, exp) = tiny((2, 1, 3), 1);
    with_graph(&exp, &format!("layers = {layers}"), tables);
    let runs = tmp.path().join("runs");
    let mut assert = run_in(&exp, &runs).assert().failure();
    for n in needles {
        assert = assert.stderr(predicate::str::contains(*n));
    }
    assert!(!runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none(), "no run folder");
}

const HEAD: &str = r#""global_avg_pool", { linear = { out = "$classes" } }"#;

#[test]
fn graph_mistakes_are_refused_naming_the_node() {
    let conv = r#"{ conv = { out = 4, kernel = 3, padding = 1 }, name = "a" }"#;
    refused(
        &format!(r#"[{conv}, {{ relu = {{}}, from = "b" }}, {HEAD}]"#),
        "",
        &["model.layers.1 (relu)", "`b` names no node; the nodes before it are named: input, a"],
    );
    refused(
        &format!(r#"[{conv}, {{ relu = {{}}, from = "c" }}, {{ relu = {{}}, name = "c" }}, {HEAD}]"#),
        "",
        &["model.layers.1 (relu)", "`c` is a later node"],
    );
    refused(
        &format!(r#"[{conv}, {{ conv = {{ out = 8, kernel = 1 }}, name = "b" }}, {{ add = ["b", "a"] }}, {HEAD}]"#),
        "",
        &[
            "model.layers.2 (add)",
            "`a` is [4, 16, 16] but `b` is [8, 16, 16]: an add needs equal shapes (or project = true",
        ],
    );
    refused(
        &format!(r#"[{conv}, {{ max_pool = {{ kernel = 2 }}, name = "p" }}, {{ concat = ["p", "a"] }}, {HEAD}]"#),
        "",
        &["model.layers.2 (concat)", "concat stacks channels of equal height and width"],
    );
    refused(
        &format!(r#"[{conv}, {{ conv = {{ out = 4, kernel = 1 }}, name = "a" }}, {HEAD}]"#),
        "",
        &["model.layers.1 (conv)", "two nodes are named `a`"],
    );
    refused(
        &format!(r#"[{conv}, {{ relu = {{}}, from = "input" }}, {HEAD}]"#),
        "",
        &["model.layers.0 (conv)", "`a` is never read"],
    );
    refused(&format!(r#"[{conv}, {{ relu = {{}}, from = ["a", "input"] }}, {HEAD}]"#), "", &["model.layers.1", "from"]);
    refused(
        &format!(r#"[{conv}, {{ mul = ["a"] }}, {HEAD}]"#),
        "",
        &["model.layers.1 (mul)", "a merge reads two or more named nodes"],
    );
    refused(
        &format!(r#"[{conv}, {{ relu = {{}}, project = true }}, {HEAD}]"#),
        "",
        &["model.layers.1.project", "only an add projects"],
    );
}

#[test]
fn template_mistakes_are_refused_naming_the_template_and_its_layer() {
    let stage = |args: &str| format!(r#"[{{ stage = {{ {args} }} }}, {HEAD}]"#);
    refused(
        &stage(r#"block = "basci", out = 8"#),
        "",
        &["model.layers.0.stage.block", "no block template `basci` (did you mean `basic`?)"],
    );
    refused(
        &stage(r#"block = "basic", out = 8, groups = 2"#),
        "",
        &["model.layers.0.stage.groups", "block `basic` has no parameter `groups`"],
    );
    refused(&stage(r#"block = "bottleneck""#), "", &["model.layers.0.stage", "block `bottleneck` needs `out`"]);
    refused(
        &stage(r#"block = "basic", out = 8, repet = 2"#),
        "",
        &["model.layers.0.stage.repet", "block `basic` has no parameter `repet` (did you mean `repeat`?)"],
    );
    refused(
        &stage(r#"block = "bottleneck", out = 8, groups = "$g""#),
        "",
        &["model.layers.0.stage.groups", "`$g` is not defined"],
    );
    // An error inside a block names the stage's block, the template's layer and the problem.
    refused(
        &stage(r#"block = "bottleneck", out = 8, mid = 4, groups = 3"#),
        "",
        &[
            "model.layers.0 (stage): layer1.0 (block `bottleneck`): its layer 3 (conv)",
            "groups = 3 must divide both input channels (4) and output channels (4)",
        ],
    );
    let loops = "\n[model.blocks.a]\nlayers = [{ stage = { block = \"b\" } }]\n[model.blocks.b]\nlayers = [{ stage = { block = \"a\" } }]\n";
    refused(&stage(r#"block = "a""#), loops, &["block templates contain each other: a -> b -> a"]);
    let cycle = "\n[model.blocks.c]\nparams = { x = \"$y + 1\", y = \"$x * 2\" }\nlayers = [\"relu\"]\n";
    refused(&stage(r#"block = "c""#), cycle, &["model.blocks.c.params", "refer to each other in a cycle: x, y"]);
    let typo = "\n[model.blocks.d]\nlayers = [{ conv = { out = \"$in * 2\", kernel = 1, bais = false } }]\n";
    refused(&stage(r#"block = "d""#), typo, &["model.blocks.d.layers.0", "bais"]);
}

#[test]
fn expressions_and_in_size_a_block_from_its_input() {
    // An inverted residual's expansion: `$in * 4` channels, then back to `$in`.
    let tables = r#"
[model.blocks.expand]
params = { t = 4 }
layers = [
  { conv = { out = "$in * $t", kernel = 1 }, name = "wide" }, "relu",
  { conv = { out = "$in", kernel = 1 }, name = "narrow" },
  { add = ["narrow", "input"] },
]
"#;
    let layers = r#"layers = [
  { conv = { out = 6, kernel = 3, padding = 1 } },
  { stage = { block = "expand", repeat = 2, t = "$t" } },
  "global_avg_pool", { linear = { out = "$classes" } },
]
params = { t = 3 }"#;
    let (_tmp, exp) = tiny((2, 1, 3), 1);
    with_graph(&exp, layers, tables);
    let (_, model) = built(&exp);
    let state = model.state_dict();
    assert_eq!(state["layer1.0.wide.weight"].dims(), &[18, 6, 1, 1], "$in * $t = 6 * 3");
    assert_eq!(state["layer1.1.narrow.weight"].dims(), &[6, 18, 1, 1]);
    // The sweepable value reaches the template through the stage's argument.
    let spec =
        ablate::spec_from_file(&exp, &[ablate::Override::parse("model.params.t=2").unwrap()], &["b", "r"]).unwrap();
    let model = Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap();
    assert_eq!(model.state_dict()["layer1.0.wide.weight"].dims(), &[12, 6, 1, 1]);
}

/// `ablate check --dot --png`: the graph file Graphviz's own `dot` draws, with an edge from
/// every node a merge reads.
#[test]
fn check_writes_the_graph_for_graphviz() {
    let (tmp, exp) = tiny((2, 1, 3), 1);
    let layers = r#"layers = [
  { conv = { out = 4, kernel = 3, padding = 1 }, name = "stem" },
  "global_avg_pool", { linear = { out = 4 }, name = "excite" }, { sigmoid = {}, name = "gate" },
  { mul = ["stem", "gate"], name = "gated" },
  { conv = { out = 2, kernel = 1 }, name = "branch", from = "stem" },
  { concat = ["gated", "branch"], name = "dense" },
  "global_avg_pool", { linear = { out = "$classes" } },
]"#;
    with_graph(&exp, layers, "");
    let dot = tmp.path().join("graph.dot");
    let out = crate::common::ablate().arg("check").arg(&exp).arg("--dot").arg(&dot).arg("--png").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The summary names what each merge reads.
    let printed = String::from_utf8_lossy(&out.stdout);
    let row = printed.lines().find(|l| l.contains(" gated ")).unwrap();
    assert!(row.trim_end().ends_with("stem, gate"), "{printed}");
    let text = std::fs::read_to_string(&dot).unwrap();
    let id = |name: &str| {
        let line =
            text.lines().find(|l| l.contains(&format!("[label=\"{name}\\n"))).unwrap_or_else(|| panic!("{text}"));
        line.trim().split(' ').next().unwrap().to_string()
    };
    for (from, to) in [
        ("stem", "gated"),
        ("gate", "gated"),
        ("excite", "gate"),
        ("stem", "branch"),
        ("gated", "dense"),
        ("branch", "dense"),
    ] {
        assert!(text.contains(&format!("{} -> {};", id(from), id(to))), "no edge {from} -> {to}:\n{text}");
    }
    let png = std::fs::read(tmp.path().join("graph.png")).expect("dot drew graph.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

/// Drop-path: `stochastic_depth` zeroes whole samples in training (the rest scaled by
/// 1 / (1 - p), as torchvision's `StochasticDepth(p, "row")`), nothing in evaluation, and
/// `dropout2d` whole channels; a stage argument `{ ramp = [first, last] }` grows a rate
/// linearly over the stage's blocks.
#[test]
fn stochastic_depth_and_dropout2d_drop_whole_samples_and_channels_and_ramp_over_a_stage() {
    use ablate::{LayerConfig, Node};
    use candle_core::Tensor;
    use candle_nn::ModuleT;

    let nodes: Vec<Node> = vec![LayerConfig::StochasticDepth(0.5).into(), LayerConfig::Flatten.into()];
    let model = Model::build_for(&nodes, (2, 3, 3), 0, &Device::Cpu).unwrap();
    let x = (Tensor::ones((400, 2, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap() * 3.0).unwrap();
    let rows = model.forward_t(&x, true).unwrap().to_vec2::<f32>().unwrap();
    assert!(
        rows.iter().all(|r| r.iter().all(|&v| v == 0.0) || r.iter().all(|&v| v == 6.0)),
        "whole samples, scaled by 2"
    );
    let dropped = rows.iter().filter(|r| r[0] == 0.0).count();
    assert!((140..=260).contains(&dropped), "about half of 400 dropped: {dropped}");
    let eval = model.forward_t(&x, false).unwrap().to_vec2::<f32>().unwrap();
    assert!(eval.iter().flatten().all(|&v| v == 3.0));

    // dropout2d: whole channels of a sample (PyTorch's Dropout2d), p = 0.25: survivors x 4/3.
    let nodes: Vec<Node> = vec![LayerConfig::Dropout2d(0.25).into(), LayerConfig::Flatten.into()];
    let model = Model::build_for(&nodes, (2, 3, 3), 0, &Device::Cpu).unwrap();
    let rows = model.forward_t(&x, true).unwrap().to_vec2::<f32>().unwrap();
    let channels: Vec<&[f32]> = rows.iter().flat_map(|r| r.chunks(9)).collect();
    assert!(channels.iter().all(|c| c.iter().all(|&v| v == 0.0) || c.iter().all(|&v| v == 4.0)), "whole channels");
    let dropped = channels.iter().filter(|c| c[0] == 0.0).count();
    assert!((140..=260).contains(&dropped), "about a quarter of 800 channels dropped: {dropped}");
    assert!(rows.iter().any(|r| r[0] != r[9]), "channels of one sample drawn apart");
    assert!(model.forward_t(&x, false).unwrap().to_vec2::<f32>().unwrap().iter().flatten().all(|&v| v == 3.0));

    let tables = r#"
[model.blocks.res]
params = { drop = 0.0 }
layers = [
  { conv = { out = "$in", kernel = 3, padding = 1 }, name = "conv" },
  { stochastic_depth = "$drop", name = "path" },
  { add = ["path", "input"] },
]
"#;
    let layers = r#"layers = [
  { conv = { out = 4, kernel = 3, padding = 1 } },
  { stage = { block = "res", repeat = 3, drop = { ramp = [0.0, 0.5] } } },
  "global_avg_pool", { linear = { out = "$classes" } },
]"#;
    let (_tmp, exp) = tiny((2, 1, 3), 1);
    with_graph(&exp, layers, tables);
    let spec = ablate::spec_from_file(&exp, &[], &["blue", "red"]).unwrap();
    let LayerConfig::Stage(stage) = &spec.layers[1].layer else { panic!("{:?}", spec.layers[1]) };
    let rates: Vec<f64> = (0..3)
        .map(|i| {
            let block = stage.blocks.instantiate(i, &[4, 16, 16]).unwrap();
            match block.nodes.iter().find_map(|n| match n.layer {
                LayerConfig::StochasticDepth(p) => Some(p),
                _ => None,
            }) {
                Some(p) => p,
                None => panic!("{block:?}"),
            }
        })
        .collect();
    assert_eq!(rates, [0.0, 0.25, 0.5]);
    Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap();
    // A table that is not a ramp is refused, naming the argument.
    refused(
        &layers[9..].replace("{ ramp = [0.0, 0.5] }", "{ ramps = [0.0, 0.5] }"),
        tables,
        &["model.layers.1.stage.drop", "a table argument is a ramp"],
    );
}

/// The shipped templates are in `experiments/_blocks.toml`: an experiment may `extends` it
/// (the same model as without), and its own `[model.blocks.basic]` replaces the shipped one.
#[test]
fn shipped_templates_come_from_blocks_toml_and_a_file_may_replace_them() {
    let (tmp, exp) = tiny((2, 1, 3), 1);
    let layers = r#"layers = [
  { conv = { out = 8, kernel = 3, padding = 1 } },
  { stage = { block = "basic", repeat = 2, out = 16, stride = 2 } },
  "global_avg_pool", { linear = { out = "$classes" } },
]"#;
    with_graph(&exp, layers, "");
    let build = |exp: &Path| {
        let spec = ablate::spec_from_file(exp, &[], &["blue", "red"]).unwrap();
        let model = Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap();
        let names: Vec<String> = model.params().into_iter().map(|(k, _)| k).collect();
        (model.summary().total_params(), names)
    };
    let plain = build(&exp);
    assert!(plain.1.contains(&"layer1.0.downsample.0.weight".to_string()), "{:?}", plain.1);

    let blocks = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/_blocks.toml");
    let text = std::fs::read_to_string(&exp).unwrap();
    let extended = tmp.path().join("extended.toml");
    std::fs::write(&extended, format!("extends = \"{}\"\n{text}", blocks.display())).unwrap();
    assert_eq!(build(&extended), plain, "extends = \"_blocks.toml\" builds the same model");

    // A basic block of the file's own: one 3x3 conv and no BatchNorm.
    let own = r#"
[model.blocks.basic]
required = ["out"]
params = { stride = 1 }
layers = [
  { conv = { out = "$out", kernel = 3, stride = "$stride", padding = 1 }, name = "only" },
  { add = ["only", "input"], project = true }, "relu",
]
"#;
    with_graph(&exp, layers, own);
    let (params, names) = build(&exp);
    assert!(
        names.contains(&"layer1.1.only.weight".to_string()) && !names.iter().any(|n| n.contains("bn1")),
        "{names:?}"
    );
    assert!(params < plain.0);
}

/// `ablate check --nodes` lists a block's own nodes under it, with what each reads; `--dot`
/// draws the block as a box of its nodes, its input feeding both its first conv and the sum.
#[test]
fn check_shows_the_nodes_inside_blocks() {
    let (tmp, exp) = tiny((2, 1, 3), 1);
    let layers = r#"layers = [
  { conv = { out = 8, kernel = 3, padding = 1 }, name = "stem" },
  { stage = { block = "basic", out = 16, stride = 2 } },
  "global_avg_pool", { linear = { out = "$classes" } },
]"#;
    with_graph(&exp, layers, "");
    let dot = tmp.path().join("g.dot");
    let out = crate::common::ablate().arg("check").arg(&exp).arg("--nodes").arg("--dot").arg(&dot).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        printed.lines().find(|l| l.split_whitespace().any(|w| w == name)).unwrap_or_else(|| panic!("{printed}"))
    };
    assert!(row("layer1.0").contains("basic"), "{printed}");
    assert!(row("conv2").trim_start().starts_with("conv"), "block nodes have no index of their own: {printed}");
    // The sum, sixth in the template: it reads bn2 and the block's input, through the
    // projection (8 * 16 + 2 * 16 parameters).
    assert!(row("add5").trim_end().ends_with("bn2, input"), "{printed}");
    assert!(row("add5").contains("(16, 8, 8)") && row("add5").contains(" 160 "), "{printed}");
    let text = std::fs::read_to_string(&dot).unwrap();
    let id = |name: &str| {
        let line =
            text.lines().find(|l| l.contains(&format!("[label=\"{name}\\n"))).unwrap_or_else(|| panic!("{text}"));
        line.trim().split(' ').next().unwrap().to_string()
    };
    assert!(text.contains("subgraph cluster_") && text.contains("label=\"layer1.0\\nbasic (16, 8, 8)"), "{text}");
    for (from, to) in [("stem", "conv1"), ("stem", "add5"), ("bn2", "add5"), ("relu6", "pool2")] {
        assert!(text.contains(&format!("{} -> {};", id(from), id(to))), "no edge {from} -> {to}:\n{text}");
    }
}
