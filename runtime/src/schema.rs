//! `ferry schema`: the JSON Schema of a pipeline file, put together from the
//! very types the loader reads (each connector's config struct, `delivery:`
//! and `errors:`), through their schemars derives: a key, a type or a
//! default changed in a config struct changes the schema with it, so an
//! editor checking a file against it agrees with `ferry validate`. The
//! checks that need more than a type (a glob that does not compile, a
//! `columns:` given for a JSON file) stay with `validate`.
//!
//! Draft 7, the draft editors' YAML language servers know best.

use ferry_api::schemars::{Schema, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use crate::config::{DeliveryConfig, ErrorsConfig};
use crate::registry::Registry;

/// A value that is only `${NAME}` (or `${NAME:-default}`) takes the type of
/// the text it is replaced with (`port: ${PORT}` is a number), so it may
/// stand wherever a number, a boolean or a constrained string goes.
const ENV_REFERENCE: &str = r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$";

/// What `name:` takes (the loader's rule, as a pattern).
const NAME_PATTERN: &str = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$";

/// The schema of a pipeline file for the connectors of `registry`.
pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut generator = SchemaSettings::draft07().into_generator();
    let sources = registry
        .sources()
        .iter()
        .map(|p| (p.kind, (p.schema)(&mut generator)))
        .collect();
    let sinks = registry
        .sinks()
        .iter()
        .map(|p| (p.kind, (p.schema)(&mut generator)))
        .collect();
    let mut delivery = generator.subschema_for::<DeliveryConfig>().to_value();
    let mut errors = generator.subschema_for::<ErrorsConfig>().to_value();
    let mut transforms = json!({
        "description": "Steps applied in order to each record between the source and the sink.",
        "type": "array",
        "items": generator
            .subschema_for::<crate::transform::TransformConfig>()
            .to_value(),
    });
    let mut definitions = Value::Object(generator.take_definitions(false));
    for value in [
        &mut delivery,
        &mut errors,
        &mut transforms,
        &mut definitions,
    ] {
        for_editors(value);
        allow_env_references(value);
    }
    let mut root = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        // No `title`: yaml-language-server heads every hover with it.
        "description": "One pipeline: records from `source` to `sink`, positions committed once the sink has made them durable. Values may be `${NAME}` (from the environment).",
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "source", "sink"],
        "properties": {
            "name": {
                "description": "The pipeline's name, unique among the files ferry runs: its offsets, dead letters and status go by it.",
                "type": "string",
                "pattern": NAME_PATTERN,
                "patternErrorMessage": "letters, digits, '-', '_' and '.' (at most 100, not starting with '.')",
            },
            "source": section("Where records come from", sources),
            "transforms": transforms,
            "sink": section("Where records go", sinks),
            "delivery": delivery,
            "errors": errors,
        },
    });
    // The config types are inlined where they are used (a field's schema
    // in place reads best in an editor): definitions are for recursive
    // types, which none of them is yet.
    if definitions.as_object().is_some_and(|d| !d.is_empty()) {
        root["definitions"] = definitions;
    }
    let mut root = Schema::try_from(root).expect("the root is an object");
    for transform in generator.transforms_mut() {
        transform.transform(&mut root);
    }
    root.to_value()
}

/// `source:` or `sink:`: `type` picks one of `kinds`, whose schema then
/// applies to the whole section (its own keys and `type`, nothing else).
fn section(what: &str, kinds: Vec<(&'static str, Schema)>) -> Value {
    let names: Vec<&str> = kinds.iter().map(|(kind, _)| *kind).collect();
    let branches: Vec<Value> = kinds
        .into_iter()
        .map(|(kind, schema)| {
            let mut schema = schema.to_value();
            for_editors(&mut schema);
            allow_env_references(&mut schema);
            with_type_key(&mut schema, kind);
            // An editor shows the branch's description for the section:
            // the struct's doc (`source: {type: file}`) says less than this.
            schema["description"] = json!(format!(
                "{what}: the `{kind}` connector (docs/connectors/{kind}.md)."
            ));
            json!({
                "if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
                "then": schema,
            })
        })
        .collect();
    json!({
        "description": format!("{what}: `type` names the connector, the other keys are its settings."),
        "type": "object",
        "required": ["type"],
        "properties": {"type": {
            "description": "The connector; its keys are the others of this section.",
            "enum": names,
        }},
        "allOf": branches,
    })
}

/// Adds `type: <kind>` to a connector's own schema, which refuses keys it
/// does not list.
fn with_type_key(schema: &mut Value, kind: &str) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties.insert("type".into(), json!({"const": kind}));
    }
    match object.get_mut("required") {
        Some(Value::Array(required)) => required.push(json!("type")),
        _ => {
            object.insert("required".into(), json!(["type"]));
        }
    }
}

/// What YAML language servers show best (checked with Red Hat's
/// yaml-language-server): a unit enum's values as one `enum` whose
/// description lists what each means (a `oneOf` of constants shows only
/// the chosen value's text on hover, not the key's), and no `default:
/// null` (absent is the default; a null default broke its completion).
fn for_editors(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            if let Some(words) = words_of(map) {
                map.remove("oneOf");
                let mut description = map
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                for (word, meaning) in &words {
                    description.push_str(&format!("\n- `{word}`: {meaning}"));
                }
                let words: Vec<&str> = words.iter().map(|(w, _)| w.as_str()).collect();
                map.insert("type".into(), json!("string"));
                map.insert("enum".into(), json!(words));
                map.insert("description".into(), json!(description.trim_start()));
            }
            map.values_mut().for_each(for_editors);
        }
        Value::Array(items) => items.iter_mut().for_each(for_editors),
        _ => {}
    }
}

/// The words and their descriptions, when `schema` is a `oneOf` of string
/// constants.
fn words_of(schema: &Map<String, Value>) -> Option<Vec<(String, String)>> {
    let branches = schema.get("oneOf")?.as_array()?;
    branches
        .iter()
        .map(|b| {
            let word = b.get("const")?.as_str()?.to_string();
            let meaning = b.get("description").and_then(Value::as_str).unwrap_or("");
            Some((word, meaning.replace('\n', " ")))
        })
        .collect()
}

/// Lets `${NAME}` stand for every value a plain string would not match.
fn allow_env_references(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // schemars lists the values of an enum as `oneOf` constants;
            // each of them taking `${NAME}` too would make a reference
            // match several. The constants exclude each other, so `anyOf`
            // says the same and lets a reference match more than one.
            if let Some(branches) = map.remove("oneOf") {
                map.insert("anyOf".into(), branches);
            }
            for (key, child) in map.iter_mut() {
                // Data, not schemas.
                if !matches!(key.as_str(), "default" | "examples" | "enum" | "const") {
                    allow_env_references(child);
                }
            }
            if refuses_plain_strings(map) {
                let mut inner = std::mem::take(map);
                for key in ["description", "default", "title", "examples"] {
                    if let Some(v) = inner.remove(key) {
                        map.insert(key.into(), v);
                    }
                }
                let reference = json!({
                    "type": "string",
                    "pattern": ENV_REFERENCE,
                    "patternErrorMessage": "a value, or `${NAME}` alone (from the environment)",
                });
                map.insert("anyOf".into(), json!([Value::Object(inner), reference]));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(allow_env_references),
        _ => {}
    }
}

/// A schema for numbers, booleans, a fixed set of values, or strings of a
/// pattern: one a `${NAME}` would not satisfy by itself.
fn refuses_plain_strings(schema: &Map<String, Value>) -> bool {
    let scalar = |t: &Value| matches!(t.as_str(), Some("integer" | "number" | "boolean"));
    let typed = match schema.get("type") {
        Some(Value::Array(types)) => types.iter().any(scalar),
        Some(t) => scalar(t),
        None => false,
    };
    typed
        || ["enum", "const", "pattern"]
            .iter()
            .any(|k| schema.contains_key(*k))
}

#[cfg(test)]
mod tests;
