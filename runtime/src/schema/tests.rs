//! The schema against the loader: every pipeline the docs and examples show
//! matches it and loads, and for every way of breaking one (a key added or
//! removed anywhere, a value of the wrong type) the schema and `validate`
//! agree, checked by an independent validator (the `jsonschema` crate).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::pipeline_schema;
use crate::config::load_str;
use crate::registry::Registry;

const COMMITTED: &str = "configs/pipeline.schema.json";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validator() -> jsonschema::Validator {
    let schema = pipeline_schema(&Registry::builtin());
    assert!(
        jsonschema::draft7::meta::is_valid(&schema),
        "not a draft-7 schema"
    );
    jsonschema::draft7::new(&schema).expect("the schema compiles")
}

fn errors(validator: &jsonschema::Validator, pipeline: &Value) -> Vec<String> {
    validator
        .iter_errors(pipeline)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Stands in for the environment: plausible values for the names the
/// samples use.
fn lookup(name: &str) -> Option<String> {
    Some(
        match name {
            "PG_URL" => "postgres://ferry@127.0.0.1:5432/test",
            "MONGODB_URI" => "mongodb://127.0.0.1:27017",
            "KAFKA_BROKERS" => "127.0.0.1:9092",
            _ => "secret",
        }
        .to_string(),
    )
}

/// Whether ferry loads `pipeline`, and its errors. Written out as JSON,
/// which is YAML too (serde_yaml would write serde_json's arbitrary-precision
/// numbers as maps).
fn loads(pipeline: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(pipeline).expect("a value becomes text");
    load_str(
        Path::new("sample.yaml"),
        &text,
        &Registry::builtin(),
        &lookup,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The YAML blocks of a Markdown file.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```yaml") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Every pipeline shown in the docs (a lone `source:` or `sink:` section
/// completed with a generate source or a file sink) and in `configs/`.
fn samples() -> Vec<(String, Value)> {
    let mut samples = Vec::new();
    let mut docs: Vec<PathBuf> = vec![repo().join("docs/pipeline-file.md")];
    let connectors = std::fs::read_dir(repo().join("docs/connectors")).expect("docs/connectors");
    docs.extend(connectors.map(|e| e.expect("an entry").path()));
    for doc in docs {
        let text = std::fs::read_to_string(&doc).expect("a doc");
        for (i, block) in yaml_blocks(&text).into_iter().enumerate() {
            let Ok(Value::Object(mut pipeline)) = serde_yaml::from_str::<Value>(&block) else {
                continue;
            };
            if !pipeline.contains_key("source") && !pipeline.contains_key("sink") {
                continue; // a fragment of a section, such as `options:`
            }
            // A missing section, or one with nothing but its `type` (a
            // skeleton's "… that connector's keys"), is filled in.
            for (section, filled) in [
                ("source", json!({"type": "generate", "count": 1})),
                (
                    "sink",
                    json!({"type": "file", "path": "/tmp/ferry-sample.jsonl"}),
                ),
            ] {
                let given = pipeline.get(section).and_then(Value::as_object);
                if given.is_none_or(|s| s.len() == 1) {
                    pipeline.insert(section.into(), filled);
                }
            }
            pipeline.insert("name".into(), json!("sample"));
            samples.push((
                format!("{} block {}", doc.display(), i + 1),
                pipeline.into(),
            ));
        }
    }
    for folder in ["configs/examples", "configs/demo"] {
        for file in crate::config::expand_paths(&[repo().join(folder)]).expect("examples") {
            let text = std::fs::read_to_string(&file).expect("an example");
            let value = serde_yaml::from_str(&text).expect("an example is YAML");
            samples.push((file.display().to_string(), value));
        }
    }
    assert!(samples.len() >= 14, "the docs lost their examples?");
    samples
}

#[test]
fn the_committed_schema_is_what_ferry_schema_prints() {
    let printed = serde_json::to_string_pretty(&pipeline_schema(&Registry::builtin())).unwrap();
    let committed = std::fs::read_to_string(repo().join(COMMITTED)).unwrap_or_default();
    assert!(
        committed.trim_end() == printed,
        "{COMMITTED} is not what `ferry schema` prints: run `cargo run -q -- schema > {COMMITTED}`"
    );
}

#[test]
fn every_documented_pipeline_matches_the_schema_and_loads() {
    let validator = validator();
    for (origin, pipeline) in samples() {
        let errors = errors(&validator, &pipeline);
        assert!(
            errors.is_empty(),
            "{origin}: the schema refuses it: {errors:#?}"
        );
        if let Err(e) = loads(&pipeline) {
            panic!("{origin}: ferry refuses it: {e}");
        }
    }
}

/// One way of breaking a sample, and whether the loader's refusal must
/// then be matched by the schema too (not so for a removed key: a key that
/// only some other key's value makes necessary is `validate`'s to check).
struct Mutation {
    what: String,
    pipeline: Value,
    schema_must_refuse_what_ferry_refuses: bool,
}

#[test]
fn the_schema_and_validate_agree_on_every_broken_sample() {
    let validator = validator();
    let mut disagreements = Vec::new();
    let mut refused = 0;
    for (origin, pipeline) in samples() {
        for m in mutations(&pipeline) {
            let by_schema = validator.is_valid(&m.pipeline);
            let by_ferry = loads(&m.pipeline);
            refused += usize::from(by_ferry.is_err());
            let agree = match (by_schema, &by_ferry) {
                (true, Ok(())) | (false, Err(_)) => true,
                // The editor must never flag what ferry takes.
                (false, Ok(())) => false,
                // librdkafka's names and values (`options:`) are its own.
                (true, Err(e)) if e.contains("librdkafka refuses it") => true,
                (true, Err(_)) => !m.schema_must_refuse_what_ferry_refuses,
            };
            if !agree {
                disagreements.push(format!(
                    "{origin}, {}: schema {}, ferry {by_ferry:?}",
                    m.what,
                    if by_schema { "accepts" } else { "refuses" }
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    // Most mutations break the file: the comparison is not vacuous.
    assert!(refused > 200, "only {refused} broken samples");
}

/// Every mapping gets an unknown key, loses each key in turn; every scalar
/// becomes a list, and every number or boolean a word.
fn mutations(pipeline: &Value) -> Vec<Mutation> {
    let mut out = Vec::new();
    let mut paths = Vec::new();
    nodes(pipeline, &mut Vec::new(), &mut paths);
    for path in paths {
        let node = at(pipeline, &path).clone();
        let mut variant = |what: String, new: Value, strict: bool| {
            let mut p = pipeline.clone();
            set(&mut p, &path, new);
            out.push(Mutation {
                what,
                pipeline: p,
                schema_must_refuse_what_ferry_refuses: strict,
            });
        };
        let shown = path.join(".");
        match &node {
            Value::Object(map) => {
                let mut with_extra = map.clone();
                with_extra.insert("zz_unknown".into(), json!(1));
                variant(format!("`{shown}` + zz_unknown"), with_extra.into(), true);
                for key in map.keys() {
                    let mut without = map.clone();
                    without.remove(key);
                    variant(format!("`{shown}` - {key}"), without.into(), false);
                }
            }
            Value::Array(_) => {}
            scalar => {
                variant(format!("`{shown}` as a list"), json!([scalar]), true);
                if scalar.is_number() || scalar.is_boolean() {
                    variant(format!("`{shown}` as a word"), json!("word"), true);
                }
            }
        }
    }
    out
}

/// The paths of every node below the top, the top itself included as `[]`.
fn nodes(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    if let Value::Object(map) = value {
        for (k, v) in map {
            path.push(k.clone());
            nodes(v, path, out);
            path.pop();
        }
    }
}

fn at<'a>(value: &'a Value, path: &[String]) -> &'a Value {
    path.iter().fold(value, |v, k| &v[k.as_str()])
}

fn set(value: &mut Value, path: &[String], new: Value) {
    *path.iter().fold(value, |v, k| &mut v[k.as_str()]) = new;
}

#[test]
fn env_references_stand_where_numbers_and_words_go() {
    let validator = validator();
    let pipeline = json!({
        "name": "env",
        "source": {"type": "generate", "count": "${COUNT}", "rate": "${RATE:-10}"},
        "sink": {"type": "file", "path": "${OUT}", "format": "${FORMAT}", "transactional": "${TX}"},
        "delivery": {"flush_interval": "${FLUSH}"},
    });
    let errors = errors(&validator, &pipeline);
    assert!(errors.is_empty(), "{errors:#?}");
    let not_a_reference = json!({
        "name": "env",
        "source": {"type": "generate", "count": "$COUNT"},
        "sink": {"type": "file", "path": "x"},
    });
    assert!(!validator.is_valid(&not_a_reference));
}

#[test]
fn every_key_says_what_it_is_for() {
    // An editor shows it on hover: a key without it is a key the user has
    // to look up.
    fn walk(value: &Value, path: &str, missing: &mut Vec<String>) {
        let Value::Object(map) = value else { return };
        if let Some(Value::Object(properties)) = map.get("properties") {
            for (key, schema) in properties {
                let described =
                    schema.get("description").is_some() || schema.get("const").is_some();
                if !described && key != "type" {
                    missing.push(format!("{path}.{key}"));
                }
            }
        }
        for (key, child) in map {
            match child {
                Value::Array(items) => items
                    .iter()
                    .for_each(|i| walk(i, &format!("{path}/{key}"), missing)),
                _ => walk(child, &format!("{path}/{key}"), missing),
            }
        }
    }
    let mut missing = Vec::new();
    walk(&pipeline_schema(&Registry::builtin()), "", &mut missing);
    assert!(
        missing.is_empty(),
        "keys without a doc comment: {missing:#?}"
    );
}
