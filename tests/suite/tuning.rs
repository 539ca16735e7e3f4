//! Convolution kernels planned by measurement (`ABLATE_TUNE`): each pass timed once, recorded
//! in the variant's `kernels.json`, kept in the machine's cache and reused from it, the cache
//! ignored when another CPU wrote it, and a resume running the plan its run recorded.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::{color_folder, experiment, only_run, run_in};

/// The thread count the runs here use, and so the cache keys' suffix.
const THREADS: &str = "2";

struct Bench {
    tmp: tempfile::TempDir,
    exp: PathBuf,
    cache: PathBuf,
}

impl Bench {
    fn new(epochs: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        color_folder(&data, 12, 3, 5);
        let exp = experiment(tmp.path(), &data, epochs);
        let cache = tmp.path().join("cache");
        Self { tmp, exp, cache }
    }

    /// `ablate run` into `runs/<name>` with `ABLATE_TUNE=<mode>` and this test's cache; returns
    /// the run folder and its log.
    fn run(&self, name: &str, mode: &str, args: &[&str], code: i32) -> (PathBuf, String) {
        let runs = self.tmp.path().join(name);
        run_in(&self.exp, &runs)
            .args(args)
            .env("ABLATE_TUNE", mode)
            .env("XDG_CACHE_HOME", &self.cache)
            .env("RAYON_NUM_THREADS", THREADS)
            .assert()
            .code(code);
        let run = only_run(&runs);
        let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
        (run, log)
    }

    /// The machine's cache file: the only file under `ablate/` in the cache folder.
    fn cache_file(&self) -> PathBuf {
        let files: Vec<PathBuf> =
            std::fs::read_dir(self.cache.join("ablate")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("kernels-") && name.ends_with(".json"), "{name}");
        files[0].clone()
    }
}

fn json_at(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn plan(file: &Value) -> &serde_json::Map<String, Value> {
    file["plan"].as_object().unwrap()
}

/// The cache's entries under their run-file keys (the thread count dropped).
fn cache_plan(file: &Value) -> serde_json::Map<String, Value> {
    let suffix = format!(" t{THREADS}");
    plan(file).iter().map(|(k, v)| (k.strip_suffix(&suffix).expect("thread suffix").to_string(), v.clone())).collect()
}

fn timed(log: &str) -> bool {
    log.contains("kernel plan: timed")
}

#[test]
fn each_pass_is_timed_once_recorded_and_reused_from_the_cache_of_this_cpu() {
    let bench = Bench::new(1);

    // A first run times every pass of the convolution and keeps the choices twice.
    let (first, log) = bench.run("a", "on", &[], 0);
    assert!(timed(&log), "{log}");
    assert!(log.contains("ABLATE_TUNE=on"), "{log}");
    let recorded = json_at(&first.join("kernels.json"));
    let cpu = recorded["cpu"].as_str().unwrap().to_string();
    let model_name = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap();
    assert!(cpu.starts_with(&model_name), "{cpu} is not this CPU, {model_name}");
    // The image's convolution (3 -> 4 channels, 3x3, padding 1, 16x16, batches of 8) in
    // training: forward and weight gradient (the image needs no input gradient); both GEMM
    // algorithms can run them, so each was timed.
    for pass in ["forward", "weight_grad"] {
        let key = format!("{pass} x8x3x16x16 w4x3x3x3 s1 p1 d1 g1");
        let (_, entry) = plan(&recorded).iter().find(|(k, _)| k.starts_with(&key)).unwrap_or_else(|| {
            panic!("no {key} in {recorded:#}");
        });
        let us = entry["us"].as_object().unwrap();
        assert!(us.contains_key("batched") && us.contains_key("per_sample"), "{key}: {entry}");
        let chosen = entry["algo"].as_str().unwrap();
        let fastest = us.iter().min_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap())).unwrap();
        assert!(
            us[chosen].as_f64().unwrap() <= 1.03 * fastest.1.as_f64().unwrap(),
            "{key}: chose {chosen}, not the fastest: {entry}"
        );
    }
    assert!(!plan(&recorded).keys().any(|k| k.starts_with("input_grad x8x3x16x16")), "{recorded:#}");
    let cache = bench.cache_file();
    let cached = json_at(&cache);
    assert_eq!(cached["cpu"], recorded["cpu"]);
    assert_eq!(&cache_plan(&cached), plan(&recorded), "the cache holds what the run timed");

    // A second run times nothing: the same plan, from the cache, which is left as it was.
    let bytes = std::fs::read(&cache).unwrap();
    let (second, log) = bench.run("b", "on", &[], 0);
    assert!(!timed(&log), "{log}");
    assert_eq!(plan(&json_at(&second.join("kernels.json"))), plan(&recorded));
    assert!(std::fs::read(&cache).unwrap() == bytes, "the cache changed without anything timed");

    // `force` times everything again.
    let (_, log) = bench.run("c", "force", &[], 0);
    assert!(timed(&log) && log.contains("ABLATE_TUNE=force"), "{log}");

    // A cache another CPU wrote (planted: every choice unmeasured and the other GEMM) is not
    // used: everything is timed again and the cache rewritten for this CPU.
    let mut foreign = json_at(&cache);
    foreign["cpu"] = json!("Another CPU (family 25, model 17, stepping 1)");
    for entry in foreign["plan"].as_object_mut().unwrap().values_mut() {
        let other = if entry["algo"] == "batched" { "per_sample" } else { "batched" };
        *entry = json!({ "algo": other });
    }
    std::fs::write(&cache, serde_json::to_vec(&foreign).unwrap()).unwrap();
    let (fourth, log) = bench.run("d", "on", &[], 0);
    assert!(timed(&log), "{log}");
    let rewritten = json_at(&cache);
    assert_eq!(rewritten["cpu"].as_str(), Some(cpu.as_str()));
    for (key, entry) in plan(&json_at(&fourth.join("kernels.json"))) {
        let candidates = entry.get("us").and_then(Value::as_object).map_or(0, |us| us.len());
        assert!(candidates >= 2, "{key}: the planted choice was used: {entry}");
    }

    // `off`: the ladder, recorded unmeasured, and no cache written.
    std::fs::remove_dir_all(&bench.cache).unwrap();
    let (fifth, log) = bench.run("e", "off", &[], 0);
    assert!(!timed(&log) && log.contains("ABLATE_TUNE=off"), "{log}");
    let ladder = json_at(&fifth.join("kernels.json"));
    assert!(plan(&ladder).values().all(|e| e.get("us").is_none()), "{ladder:#}");
    assert!(!bench.cache.exists());
}

#[test]
fn a_bad_tuning_mode_is_refused_before_a_run_folder_exists() {
    let bench = Bench::new(1);
    let runs = bench.tmp.path().join("runs");
    let out = run_in(&bench.exp, &runs).env("ABLATE_TUNE", "fast").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ABLATE_TUNE = \"fast\": expected off, on or force"), "{err}");
    assert!(!runs.exists());
}

/// The last and the best weights of a run.
fn last_state(run: &Path) -> Vec<Vec<u8>> {
    ["checkpoints/last.safetensors", "checkpoints/best.safetensors"]
        .iter()
        .map(|f| std::fs::read(run.join(f)).unwrap())
        .collect()
}

#[test]
fn a_resume_runs_the_plan_its_run_recorded() {
    let bench = Bench::new(2);
    // Every pass this experiment runs, from a run on the ladder (which takes the batched GEMM
    // for these small maps).
    let (ladder, _) = bench.run("ladder", "off", &[], 0);
    let ladder_plan = json_at(&ladder.join("kernels.json"));
    assert!(plan(&ladder_plan).values().all(|e| e["algo"] == "batched"), "{ladder_plan:#}");

    // A cache that says: the per-sample GEMM everywhere.
    let per_sample: serde_json::Map<String, Value> =
        plan(&ladder_plan).keys().map(|k| (format!("{k} t{THREADS}"), json!({ "algo": "per_sample" }))).collect();
    let cache = json!({ "version": ablate::KERNEL_CACHE_VERSION, "cpu": ladder_plan["cpu"], "plan": per_sample });
    std::fs::create_dir_all(bench.cache.join("ablate")).unwrap();
    let name = ablate::kernel_cache_path().unwrap().file_name().unwrap().to_owned();
    std::fs::write(bench.cache.join("ablate").join(name), serde_json::to_vec(&cache).unwrap()).unwrap();

    // Uninterrupted on that plan.
    let (reference, log) = bench.run("reference", "on", &[], 0);
    assert!(!timed(&log), "{log}");
    assert!(plan(&json_at(&reference.join("kernels.json"))).values().all(|e| e["algo"] == "per_sample"));
    assert!(last_state(&reference) != last_state(&ladder), "the two plans train to the same bits: no test");

    // Interrupted on that plan, then resumed on the ladder: the plan the run recorded wins.
    // (After the epoch's 3 steps, so the resume meets no training batch the cut run did not.)
    let (cut, _) = bench.run("cut", "on", &["--stop-after-steps", "3"], 130);
    let out = crate::common::ablate()
        .arg("resume")
        .arg(&cut)
        .env("ABLATE_TUNE", "off")
        .env("XDG_CACHE_HOME", &bench.cache)
        .env("RAYON_NUM_THREADS", THREADS)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(cut.join("log.txt")).unwrap();
    assert!(log.contains("passes recorded in kernels.json"), "{log}");
    assert!(last_state(&cut) == last_state(&reference), "the resume did not run the recorded plan");
}

/// `ablate predict --probs` on the run's own test images.
fn predicted(bench: &Bench, run: &Path, mode: &str, out: &str) -> String {
    let out = bench.tmp.path().join(out);
    crate::common::ablate()
        .arg("predict")
        .arg(run)
        .arg("--probs")
        .arg("--out")
        .arg(&out)
        .env("ABLATE_TUNE", mode)
        .env("XDG_CACHE_HOME", &bench.cache)
        .env("RAYON_NUM_THREADS", THREADS)
        .assert()
        .success();
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn predict_computes_with_the_plan_its_run_recorded() {
    // The implicit kernels (AVX-512, 16 output channels) add a reduction of more than 128
    // products in blocks, the GEMMs in one chain: the second convolution's forward pass (32 x 9
    // products per output, three blocks) tells the plans apart. (With 16 x 9 products, two
    // blocks of 126 and 18, the three test images' probabilities came out the same.)
    if ablate::ops::isa::Isa::detected().avx512().is_none() {
        eprintln!("WARNING: no AVX-512 on this CPU: predict_computes_with_the_plan_its_run_recorded checks nothing");
        return;
    }
    let bench = Bench::new(1);
    let layers = "model.layers=[{ conv = { out = 32, kernel = 3, padding = 1 } }, \"relu\", \
                  { conv = { out = 16, kernel = 3, padding = 1 } }, \"relu\", { max_pool = { kernel = 2 } }, \
                  { linear = { out = \"$classes\" } }]";
    let (run, _) = bench.run("ladder", "off", &["--set", layers], 0);
    let recorded = run.join("kernels.json");
    // Every forward pass swapped between the implicit kernels and the batched GEMM.
    let mut swapped = json_at(&recorded);
    let mut test_batch = false;
    for (key, entry) in swapped["plan"].as_object_mut().unwrap() {
        if key.starts_with("forward") {
            let other = if entry["algo"] == "implicit" { "batched" } else { "implicit" };
            *entry = json!({ "algo": other });
            // The second convolution on the run's 3 test images.
            test_batch |= key.starts_with("forward x3x32x16x16 w16x32x3x3");
        }
    }
    assert!(test_batch, "the test images' pass is not in the run's plan: {swapped:#}");
    let as_run = predicted(&bench, &run, "off", "as_run.csv");
    std::fs::write(&recorded, serde_json::to_vec(&swapped).unwrap()).unwrap();
    let as_swapped = predicted(&bench, &run, "off", "swapped.csv");
    assert!(as_run != as_swapped, "predict did not compute with the run's kernels.json");
}

#[test]
fn a_later_shard_follows_the_plan_an_earlier_shard_recorded() {
    let bench = Bench::new(1);
    // Two variants with the same convolutions: only the learning rate differs.
    let text = std::fs::read_to_string(&bench.exp).unwrap();
    std::fs::write(&bench.exp, format!("{text}\n[sweep]\n\"optimizer.lr\" = [0.01, 0.001]\n")).unwrap();
    let runs = bench.tmp.path().join("runs");
    let shard = |index: &str, mode: &str, cache: &str| {
        run_in(&bench.exp, &runs)
            .args(["--shard", index, "--run-id", "j1"])
            .env("ABLATE_TUNE", mode)
            .env("XDG_CACHE_HOME", bench.tmp.path().join(cache))
            .env("RAYON_NUM_THREADS", THREADS)
            .assert()
            .success();
    };
    // The second shard as on another node: a cache of its own, and everything timed again.
    shard("0/2", "on", "cache-a");
    shard("1/2", "force", "cache-b");
    let plans: Vec<Value> = std::fs::read_dir(runs.join("j1_tiny"))
        .unwrap()
        .map(|e| e.unwrap().path().join("kernels.json"))
        .filter(|p| p.is_file())
        .map(|p| json_at(&p))
        .collect();
    assert_eq!(plans.len(), 2, "one plan per variant");
    let (first, second) = (plan(&plans[0]), plan(&plans[1]));
    let shared: Vec<&String> = first.keys().filter(|k| second.contains_key(*k)).collect();
    assert!(shared.iter().any(|k| k.starts_with("weight_grad")), "no pass in common: {first:?} {second:?}");
    for key in shared {
        // Timings included: the second shard took the first's entries instead of timing again.
        assert_eq!(first[key], second[key], "{key}");
    }
}
