//! TensorBoard HParams plugin summaries (`plugins/hparams/plugin_data.proto`, `api.proto`):
//! the experiment (hyper-parameters with their domains, metrics) at a run's root, and one
//! session per variant (its values at start, its status at the end).
//!
//! tensorboard-rs leaves `add_hparams` unimplemented; the generated protos in
//! tensorboard-proto have every message, so the summaries are built here.

use protobuf::Message;
use protobuf::well_known_types::{ListValue, Value};
use tensorboard_proto::api::{DataType, Experiment, HParamInfo, MetricInfo, MetricName, Status};
use tensorboard_proto::plugin_hparams::{HParamsPluginData, SessionEndInfo, SessionStartInfo};
use tensorboard_proto::summary::{Summary, Summary_Value, SummaryMetadata};

/// Scalar tags shown as HParams metric columns.
pub const METRICS: [&str; 5] = ["val/acc", "val/loss", "train/loss", "best/val_acc", "images_per_sec"];

/// A hyper-parameter's value as the plugin stores it.
fn value(v: &toml::Value) -> Value {
    let mut out = Value::new();
    match v {
        toml::Value::Integer(i) => out.set_number_value(*i as f64),
        toml::Value::Float(f) => out.set_number_value(*f),
        toml::Value::Boolean(b) => out.set_bool_value(*b),
        toml::Value::String(s) => out.set_string_value(s.clone()),
        other => out.set_string_value(other.to_string()),
    }
    out
}

fn data_type(v: &toml::Value) -> DataType {
    match v {
        toml::Value::Integer(_) | toml::Value::Float(_) => DataType::DATA_TYPE_FLOAT64,
        toml::Value::Boolean(_) => DataType::DATA_TYPE_BOOL,
        _ => DataType::DATA_TYPE_STRING,
    }
}

fn summary(tag: &str, data: HParamsPluginData) -> Summary {
    let mut meta = SummaryMetadata::new();
    meta.mut_plugin_data().set_plugin_name("hparams".into());
    meta.mut_plugin_data().set_content(data.write_to_bytes().expect("in-memory protobuf encoding"));
    let mut v = Summary_Value::new();
    v.set_tag(tag.into());
    v.set_metadata(meta);
    let mut s = Summary::new();
    s.mut_value().push(v);
    s
}

/// `_hparams_/experiment`: every hyper-parameter with its values (the swept domain) and the
/// metric columns.
pub fn experiment(hparams: &[(String, Vec<toml::Value>)], time_created_secs: f64) -> Summary {
    let mut exp = Experiment::new();
    exp.set_time_created_secs(time_created_secs);
    for (name, values) in hparams {
        let mut info = HParamInfo::new();
        info.set_name(name.clone());
        if let Some(first) = values.first() {
            info.set_field_type(data_type(first));
        }
        let mut domain = ListValue::new();
        for v in values {
            domain.mut_values().push(value(v));
        }
        info.set_domain_discrete(domain);
        exp.mut_hparam_infos().push(info);
    }
    for tag in METRICS {
        let mut name = MetricName::new();
        name.set_tag(tag.into());
        let mut info = MetricInfo::new();
        info.set_name(name);
        exp.mut_metric_infos().push(info);
    }
    let mut data = HParamsPluginData::new();
    data.set_version(0);
    data.set_experiment(exp);
    summary("_hparams_/experiment", data)
}

/// `_hparams_/session_start_info`: one variant's values.
pub fn session_start(hparams: &[(String, toml::Value)], group: &str, start_time_secs: f64) -> Summary {
    let mut start = SessionStartInfo::new();
    for (k, v) in hparams {
        start.mut_hparams().insert(k.clone(), value(v));
    }
    start.set_group_name(group.into());
    start.set_start_time_secs(start_time_secs);
    let mut data = HParamsPluginData::new();
    data.set_version(0);
    data.set_session_start_info(start);
    summary("_hparams_/session_start_info", data)
}

/// `_hparams_/session_end_info`: SUCCESS or FAILURE.
pub fn session_end(ok: bool, end_time_secs: f64) -> Summary {
    let mut end = SessionEndInfo::new();
    end.set_status(if ok { Status::STATUS_SUCCESS } else { Status::STATUS_FAILURE });
    end.set_end_time_secs(end_time_secs);
    let mut data = HParamsPluginData::new();
    data.set_version(0);
    data.set_session_end_info(end);
    summary("_hparams_/session_end_info", data)
}

/// Seconds since the Unix epoch, as the plugin's timestamps.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Every hyper-parameter of `sessions` with the values it takes, in first-seen order.
pub fn domains(sessions: &[&[(String, toml::Value)]]) -> Vec<(String, Vec<toml::Value>)> {
    let mut domains: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (k, x) in sessions.iter().flat_map(|s| s.iter()) {
        match domains.iter_mut().find(|(name, _)| name == k) {
            Some((_, vals)) if !vals.contains(x) => vals.push(x.clone()),
            Some(_) => {}
            None => domains.push((k.clone(), vec![x.clone()])),
        }
    }
    domains
}
