use std::path::Path;

use super::*;
use crate::registry::Registry;

fn load(text: &str) -> Result<PipelineConfig, Vec<String>> {
    let env = |name: &str| match name {
        "OUT" => Some("/tmp/out.jsonl".to_string()),
        "BATCH" => Some("250".to_string()),
        "PASSWORD" => Some("pa55word".to_string()),
        _ => None,
    };
    load_str(Path::new("p.yaml"), text, &Registry::builtin(), &env)
        .map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

#[test]
fn a_full_pipeline_loads_with_defaults_and_env() {
    let p = load(
        "name: ok\nsource:\n  type: file\n  path: /in/*.jsonl\nsink:\n  type: file\n  path: ${OUT}\ndelivery:\n  batch_size: ${BATCH}\n",
    )
    .unwrap();
    assert_eq!(p.name, "ok");
    assert_eq!(p.delivery.batch_size, 250);
    assert_eq!(p.delivery.flush_interval, Duration::from_secs(1));
    assert_eq!(p.errors.tolerance, Tolerance::None);
    assert_eq!(p.sink.describe(), "file /tmp/out.jsonl (json)");
}

#[test]
fn a_variable_of_digits_is_a_number_where_one_goes_and_text_where_text_goes() {
    let env = |name: &str| match name {
        "DB" => Some("5".to_string()),
        "PW" => Some("12345".to_string()),
        "BATCH" => Some("250".to_string()),
        _ => None,
    };
    let text = "name: ok\nsource:\n  type: file\n  path: /in/*.jsonl\nsink:\n  type: mongodb\n  uri: mongodb://u:${PW}@h\n  database: ${DB}\n  collection: ${PW}\n  id:\n    field: ${PW}\ndelivery:\n  batch_size: ${BATCH}\n";
    let p = load_str(Path::new("p.yaml"), text, &Registry::builtin(), &env).unwrap();
    assert_eq!(p.delivery.batch_size, 250);
    assert!(
        p.sink.describe().contains("5.12345"),
        "{}",
        p.sink.describe()
    );
    // A number where a number goes stays one; text where one goes is refused.
    let text = "name: ok\nsource:\n  type: file\n  path: /in/*.jsonl\nsink:\n  type: file\n  path: out\ndelivery:\n  batch_size: ${DB}\n  flush_interval: ${PW}\n";
    let errors = load_str(Path::new("p.yaml"), text, &Registry::builtin(), &env).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    // (A number from the environment is a setting, not masked: see redact.rs.)
    assert!(
        errors
            .to_string()
            .contains("delivery.flush_interval: `12345` is not a duration"),
        "{errors}"
    );
}

#[test]
fn every_error_of_a_file_is_reported_with_its_location() {
    let errs = load(
        "name: x\nsource:\n  type: file\n  path: /in\n  fromat: json\n  format: xml\nsink:\n  type: file\ndelivery:\n  batch_size: -1\n  extra: 1\n",
    )
    .unwrap_err();
    assert_eq!(
        errs,
        [
            "p.yaml:5:3: source.fromat: unknown key `fromat`, expected one of `path`, `format`, `poll_interval`, `max_line_bytes`",
            "p.yaml:6:11: source.format: unknown variant `xml`, expected one of `json`, `text`, `csv`",
            "p.yaml:7:1: sink.path: missing key `path`",
            "p.yaml:10:15: delivery.batch_size: invalid value: number -1, expected a whole number in the range this key takes",
            "p.yaml:11:3: delivery.extra: unknown key `extra`, expected `batch_size` or `flush_interval`",
        ]
    );
}

#[test]
fn values_from_the_environment_never_appear_in_messages() {
    let errs = load(
        "name: x\nsource:\n  type: file\n  path: /in\nsink:\n  type: file\n  path: /out\n  transactional: ${PASSWORD}\n",
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(!errs[0].contains("pa55word"), "{}", errs[0]);
    assert!(errs[0].contains("sink.transactional"), "{}", errs[0]);
}

#[test]
fn a_file_that_is_not_a_mapping_is_one_clear_error() {
    let errs = load("- just\n- a list\n").unwrap_err();
    assert_eq!(
        errs,
        ["p.yaml:1:1: a pipeline file must be a mapping with the keys name, source and sink"]
    );
}
