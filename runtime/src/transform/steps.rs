//! The built-in steps that need no expression language: rename, drop,
//! keep, set, cast, flatten, timestamp. Each is parsed once from its config
//! (`Step::compile`, no I/O, every problem at once) and then applied to one
//! record's value at a time.

use ferry_api::{ConfigProblem, PathSegment, Value};
use serde_json::Map;

use super::lang::{self, Vrl};
use super::path::FieldPath;
use super::time::{TimeFormat, cast_timestamp};
use super::{CastTo, TransformConfig};

/// A step, ready to run.
#[derive(Debug)]
pub(super) enum Step {
    /// Keeps a record when its condition is true.
    Filter(Vrl),
    Remap(Vrl),
    Rename(Vec<(FieldPath, FieldPath)>),
    Drop(Vec<FieldPath>),
    Keep(Vec<FieldPath>),
    Set(Vec<(FieldPath, Value)>),
    Cast(Vec<(FieldPath, CastTo)>),
    Flatten(String),
    Timestamp {
        field: FieldPath,
        parse: TimeFormat,
        format: TimeFormat,
    },
    Route {
        field: FieldPath,
        map: std::collections::BTreeMap<String, String>,
        default: Option<String>,
    },
}

/// Each of `keys` as a path, or a problem at `fields.<key>` (a map's key)
/// or `fields[i]` (a list's item).
fn paths<'a>(
    keys: impl Iterator<Item = &'a String>,
    problems: &mut Vec<ConfigProblem>,
    map: bool,
) -> Vec<FieldPath> {
    keys.enumerate()
        .filter_map(|(i, k)| match FieldPath::parse(k) {
            Ok(p) => Some(p),
            Err(why) => {
                let at = if map {
                    PathSegment::Key(k.clone())
                } else {
                    PathSegment::Index(i)
                };
                problems.push(ConfigProblem {
                    path: vec![PathSegment::Key("fields".into()), at],
                    message: why,
                });
                None
            }
        })
        .collect()
}

/// Two of `targets` that are one field, or one inside the other: what one
/// writes the other would overwrite (or could never write into).
fn overlapping(targets: &[FieldPath], verb: &str, problems: &mut Vec<ConfigProblem>) {
    for (i, a) in targets.iter().enumerate() {
        for b in &targets[i + 1..] {
            if a.holds(b) || b.holds(a) {
                problems.push(ConfigProblem::at(
                    "fields",
                    format!("{a} and {b} are both {verb}: one would overwrite the other"),
                ));
            }
        }
    }
}

/// A program's compile errors, at the key that holds it.
fn program_problems(key: &str, errors: Vec<String>) -> Vec<ConfigProblem> {
    errors
        .into_iter()
        .map(|e| ConfigProblem::at(key, e))
        .collect()
}

impl Step {
    /// The step for `config`, or what is wrong with it (paths relative to
    /// the step).
    pub(super) fn compile(config: &TransformConfig) -> Result<Step, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let step = match config {
            TransformConfig::Rename { fields } => {
                let from = paths(fields.keys(), &mut problems, true);
                // A bad new name is reported at its old name's key.
                let to: Vec<FieldPath> = fields
                    .iter()
                    .filter_map(|(k, v)| match FieldPath::parse(v) {
                        Ok(p) => Some(p),
                        Err(why) => {
                            problems.push(ConfigProblem {
                                path: vec![
                                    PathSegment::Key("fields".into()),
                                    PathSegment::Key(k.clone()),
                                ],
                                message: why,
                            });
                            None
                        }
                    })
                    .collect();
                if problems.is_empty() {
                    overlapping(&to, "renamed to", &mut problems);
                }
                Step::Rename(from.into_iter().zip(to).collect())
            }
            TransformConfig::Drop { fields } => {
                Step::Drop(paths(fields.iter(), &mut problems, false))
            }
            TransformConfig::Keep { fields } => {
                // A path inside another kept one is kept with it.
                let all = paths(fields.iter(), &mut problems, false);
                let outer: Vec<FieldPath> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| {
                        !all.iter()
                            .enumerate()
                            .any(|(j, q)| j != *i && q.holds(p) && (q != *p || j < *i))
                    })
                    .map(|(_, p)| p.clone())
                    .collect();
                Step::Keep(outer)
            }
            TransformConfig::Set { fields } => {
                let keys = paths(fields.keys(), &mut problems, true);
                if problems.is_empty() {
                    overlapping(&keys, "set", &mut problems);
                }
                Step::Set(keys.into_iter().zip(fields.values().cloned()).collect())
            }
            TransformConfig::Cast { fields } => {
                let keys = paths(fields.keys(), &mut problems, true);
                Step::Cast(keys.into_iter().zip(fields.values().copied()).collect())
            }
            TransformConfig::Flatten { separator } => {
                if separator.is_empty() {
                    problems.push(ConfigProblem::at("separator", "may not be empty"));
                }
                Step::Flatten(separator.clone())
            }
            TransformConfig::Timestamp {
                field,
                parse,
                format,
            } => {
                let field = FieldPath::parse(field)
                    .map_err(|why| problems.push(ConfigProblem::at("field", why)));
                let parse = TimeFormat::parse(parse)
                    .map_err(|why| problems.push(ConfigProblem::at("parse", why)));
                let format = TimeFormat::parse(format)
                    .map_err(|why| problems.push(ConfigProblem::at("format", why)));
                match (field, parse, format) {
                    (Ok(field), Ok(parse), Ok(format)) => Step::Timestamp {
                        field,
                        parse,
                        format,
                    },
                    _ => return Err(problems),
                }
            }
            TransformConfig::Route {
                field,
                map,
                default,
            } => {
                let field = FieldPath::parse(field)
                    .map_err(|why| problems.push(ConfigProblem::at("field", why)));
                for (value, name) in map {
                    if name.is_empty() {
                        problems.push(ConfigProblem {
                            path: vec![
                                PathSegment::Key("map".into()),
                                PathSegment::Key(value.clone()),
                            ],
                            message: "an empty destination".into(),
                        });
                    }
                }
                if default.as_deref() == Some("") {
                    problems.push(ConfigProblem::at("default", "an empty destination"));
                }
                match field {
                    Ok(field) if problems.is_empty() => Step::Route {
                        field,
                        map: map.clone(),
                        default: default.clone(),
                    },
                    _ => return Err(problems),
                }
            }
            TransformConfig::Filter { condition } => match Vrl::condition(condition) {
                Ok(program) => Step::Filter(program),
                Err(errors) => return Err(program_problems("if", errors)),
            },
            TransformConfig::Remap { source } => match Vrl::compile(source) {
                Ok(program) => Step::Remap(program),
                Err(errors) => return Err(program_problems("source", errors)),
            },
        };
        if problems.is_empty() {
            Ok(step)
        } else {
            Err(problems)
        }
    }

    /// Applies the step to a record: false when the record is dropped (a
    /// filter's condition is false).
    pub(super) fn apply(&self, record: &mut ferry_api::Record) -> Result<bool, String> {
        if let Step::Route {
            field,
            map,
            default,
        } = self
        {
            record.destination = Some(destination(field, map, default, &record.value)?);
            return Ok(true);
        }
        self.apply_to_value(&mut record.value)
    }

    /// A filter or a remap: a VRL program.
    pub(super) fn is_program(&self) -> bool {
        matches!(self, Step::Filter(_) | Step::Remap(_))
    }

    /// Runs a filter or a remap ([`Step::is_program`]) on a record held as
    /// VRL's value (false: the filter drops it).
    pub(super) fn run_vrl(&self, target: &mut lang::VrlTarget) -> Result<bool, String> {
        match self {
            Step::Filter(program) => match program.run_in(target)? {
                vrl::value::Value::Boolean(keep) => Ok(keep),
                other => Err(format!(
                    "the condition gave {other}, not true or false (end it with a comparison)"
                )),
            },
            Step::Remap(program) => program.run_in(target).map(|_| true),
            _ => unreachable!("only programs run in VRL"),
        }
    }

    /// A built-in step on a record's value (programs and routes are run by
    /// [`super::Chain::apply`] and [`Step::apply`]).
    fn apply_to_value(&self, value: &mut Value) -> Result<bool, String> {
        if !value.is_object() {
            return Err(format!(
                "the record is {}, not an object",
                ferry_connector_kit::json_kind(value)
            ));
        }
        match self {
            Step::Rename(pairs) => {
                // All taken first, then all set: `{a: b, b: a}` swaps.
                let taken: Vec<(&FieldPath, Value)> = pairs
                    .iter()
                    .filter_map(|(from, to)| from.take(value).map(|v| (to, v)))
                    .collect();
                for (to, v) in taken {
                    to.set(value, v)?;
                }
            }
            Step::Drop(fields) => {
                for f in fields {
                    f.take(value);
                }
            }
            Step::Keep(fields) => {
                let mut kept = Value::Object(Map::new());
                for f in fields {
                    if let Some(v) = f.take(value) {
                        f.set(&mut kept, v)?;
                    }
                }
                *value = kept;
            }
            Step::Set(fields) => {
                for (f, v) in fields {
                    f.set(value, v.clone())?;
                }
            }
            Step::Cast(fields) => {
                for (f, to) in fields {
                    if let Some(v) = f.get_mut(value) {
                        *v = cast(std::mem::take(v), *to).map_err(|why| format!("{f}: {why}"))?;
                    }
                }
            }
            Step::Flatten(separator) => {
                let Value::Object(map) = std::mem::take(value) else {
                    unreachable!("checked above")
                };
                let mut flat = Map::new();
                flatten_into(&mut flat, None, map, separator)?;
                *value = Value::Object(flat);
            }
            Step::Timestamp {
                field,
                parse,
                format,
            } => {
                // Null stays null, as in `cast`.
                if let Some(v) = field.get_mut(value)
                    && !v.is_null()
                {
                    let at = parse.read(v).map_err(|why| format!("{field}: {why}"))?;
                    *v = format.write(at).map_err(|why| format!("{field}: {why}"))?;
                }
            }
            Step::Filter(_) | Step::Remap(_) | Step::Route { .. } => {
                unreachable!("run by the chain and Step::apply")
            }
        }
        Ok(true)
    }
}

/// The destination `route` gives a record: its field's value as text,
/// through `map` when there is one, else `default`.
fn destination(
    field: &FieldPath,
    map: &std::collections::BTreeMap<String, String>,
    default: &Option<String>,
    value: &Value,
) -> Result<String, String> {
    let named = match field.get(value).map(ferry_connector_kit::name_in) {
        None => None,
        Some(Ok(name)) => name,
        Some(Err(kind)) => return Err(format!("{field} is {kind}, not the name of a destination")),
    };
    let routed = match named {
        Some(name) if map.is_empty() => Some(name.into_owned()),
        Some(name) => map.get(name.as_ref()).cloned(),
        None => None,
    };
    match (routed, default) {
        (Some(to), _) => Ok(to),
        (None, Some(d)) => Ok(d.clone()),
        (None, None) => Err(match field.get(value) {
            None | Some(Value::Null) => format!("{field} is missing, and the route has no default"),
            Some(v) if map.is_empty() => {
                format!("{field} is {}, and the route has no default", shown(v))
            }
            Some(v) => format!(
                "{field} is {}, which is not in the route's map, and the route has no default",
                shown(v)
            ),
        }),
    }
}

/// `nested` into `flat` under `prefix`, objects as `a.b` keys (arrays and
/// empty objects are values).
fn flatten_into(
    flat: &mut Map<String, Value>,
    prefix: Option<&str>,
    nested: Map<String, Value>,
    sep: &str,
) -> Result<(), String> {
    for (k, v) in nested {
        let key = match prefix {
            Some(p) => format!("{p}{sep}{k}"),
            None => k,
        };
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                flatten_into(flat, Some(&key), inner, sep)?
            }
            other => {
                if flat.contains_key(&key) {
                    return Err(format!(
                        "flattened, two fields would be {key:?} (one is lost): choose another separator"
                    ));
                }
                flat.insert(key, other);
            }
        }
    }
    Ok(())
}

/// `v` as the type `to`; null stays null.
fn cast(v: Value, to: CastTo) -> Result<Value, String> {
    if v.is_null() {
        return Ok(v);
    }
    let refuse = |v: &Value| Err(format!("{} cannot be cast to {}", shown(v), to.name()));
    match to {
        CastTo::String => Ok(match v {
            Value::String(s) => Value::String(s),
            other => Value::String(other.to_string()),
        }),
        CastTo::Integer => match &v {
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Ok(Value::from(i)),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    Ok(Value::from(f as i64))
                }
                _ => refuse(&v),
            },
            // "3" and "3.0"; not "3.5".
            Value::String(s) => match (s.trim().parse::<i64>(), s.trim().parse::<f64>()) {
                (Ok(i), _) => Ok(Value::from(i)),
                (_, Ok(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Value::from(f as i64)),
                _ => refuse(&v),
            },
            Value::Bool(b) => Ok(Value::from(i64::from(*b))),
            _ => refuse(&v),
        },
        CastTo::Float => match &v {
            Value::Number(n) => n.as_f64().map(Value::from).map_or_else(|| refuse(&v), Ok),
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Value::from(f)),
                _ => refuse(&v),
            },
            _ => refuse(&v),
        },
        CastTo::Boolean => match &v {
            Value::Bool(_) => Ok(v),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "1" | "on" => Ok(Value::Bool(true)),
                "false" | "no" | "n" | "0" | "off" => Ok(Value::Bool(false)),
                _ => refuse(&v),
            },
            Value::Number(n) => match n.as_f64() {
                Some(0.0) => Ok(Value::Bool(false)),
                Some(1.0) => Ok(Value::Bool(true)),
                _ => refuse(&v),
            },
            _ => refuse(&v),
        },
        CastTo::Timestamp => cast_timestamp(&v).map_err(|_| {
            format!(
                "{} cannot be cast to timestamp (RFC 3339 text, or Unix seconds)",
                shown(&v)
            )
        }),
    }
}

/// A value, short, for an error message.
pub(super) fn shown(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(yaml: &str) -> Step {
        let c: TransformConfig = serde_yaml::from_str(yaml).unwrap();
        Step::compile(&c).unwrap()
    }

    fn run(yaml: &str, mut v: Value) -> Result<Value, String> {
        step(yaml).apply_to_value(&mut v).map(|_| v)
    }

    fn route(yaml: &str, v: Value) -> Result<Option<String>, String> {
        let position = ferry_api::Position {
            partition: std::sync::Arc::new(ferry_api::Partition::new("p")),
            offset: json!(0),
        };
        let mut r = ferry_api::Record::new(v, position);
        step(yaml).apply(&mut r)?;
        Ok(r.destination)
    }

    /// What a probe found: a panic inside a VRL function (chrono's `%#z`)
    /// fails the record, and an infinite number is no JSON.
    #[test]
    fn a_panicking_function_and_an_infinite_number_fail_the_record() {
        let chain = |source: &str| {
            let c: TransformConfig =
                serde_yaml::from_str(&format!("type: remap\nsource: '{source}'")).unwrap();
            super::super::Chain::compile(&[c]).unwrap()
        };
        let record = || {
            let position = ferry_api::Position {
                partition: std::sync::Arc::new(ferry_api::Partition::new("p")),
                offset: json!(0),
            };
            ferry_api::Record::new(json!({"f": "%#z", "n": 1e308}), position)
        };
        for (source, says) in [
            (".a = format_timestamp!(now(), to_string!(.f))", "panicked"),
            (".inf = to_float!(.n) * 10.0", "JSON cannot hold"),
        ] {
            match chain(source).apply(record()) {
                super::super::Outcome::Failed(r, f) => {
                    assert!(f.error.contains(says), "{source}: {}", f.error);
                    assert_eq!((f.step, f.kind), (0, "remap"));
                    assert_eq!(*r.value, json!({"f": "%#z", "n": 1e308}));
                }
                _ => panic!("{source}: not failed"),
            }
        }
    }

    #[test]
    fn route_names_the_destination_from_a_field() {
        let plain = "type: route\nfield: geo.region";
        assert_eq!(
            route(plain, json!({"geo": {"region": "eu"}})),
            Ok(Some("eu".into()))
        );
        assert_eq!(
            route(plain, json!({"geo": {"region": 7}})),
            Ok(Some("7".into()))
        );
        let err = route(plain, json!({"x": 1})).unwrap_err();
        assert!(err.contains("geo.region is missing"), "{err}");
        let err = route(plain, json!({"geo": {"region": [1]}})).unwrap_err();
        assert!(err.contains("is an array"), "{err}");
        let mapped = "type: route\nfield: r\nmap: {eu: orders_eu}\ndefault: orders_other";
        assert_eq!(
            route(mapped, json!({"r": "eu"})),
            Ok(Some("orders_eu".into()))
        );
        assert_eq!(
            route(mapped, json!({"r": "us"})),
            Ok(Some("orders_other".into()))
        );
        assert_eq!(
            route(mapped, json!({"r": ""})),
            Ok(Some("orders_other".into()))
        );
        let strict = "type: route\nfield: r\nmap: {eu: orders_eu}";
        let err = route(strict, json!({"r": "us"})).unwrap_err();
        assert!(err.contains("not in the route's map"), "{err}");
        let bad: TransformConfig =
            serde_yaml::from_str("type: route\nfield: 'a..b'\nmap: {x: ''}\ndefault: ''").unwrap();
        assert_eq!(Step::compile(&bad).unwrap_err().len(), 3);
    }

    #[test]
    fn rename_drop_keep_and_set_move_nested_fields() {
        let v = json!({"cust": 1, "amt": 2, "internal": {"debug": true, "x": 1}});
        assert_eq!(
            run(
                "type: rename\nfields: {cust: customer_id, amt: money.amount}",
                v.clone()
            )
            .unwrap(),
            json!({"customer_id": 1, "money": {"amount": 2}, "internal": {"debug": true, "x": 1}})
        );
        assert_eq!(
            run("type: rename\nfields: {cust: amt, amt: cust}", v.clone()).unwrap()["cust"],
            json!(2)
        );
        assert_eq!(
            run("type: drop\nfields: [amt, internal.debug, nope]", v.clone()).unwrap(),
            json!({"cust": 1, "internal": {"x": 1}})
        );
        assert_eq!(
            run("type: keep\nfields: [cust, internal.x]", v.clone()).unwrap(),
            json!({"cust": 1, "internal": {"x": 1}})
        );
        assert_eq!(
            run("type: set\nfields: {source_system: orders-v1, a.b: 3}", v).unwrap()["a"],
            json!({"b": 3})
        );
    }

    #[test]
    fn casts_convert_what_they_can_and_name_what_they_cannot() {
        let cast = "type: cast\nfields: {amount: float, qty: integer, paid: boolean, n: string}";
        let v = json!({"amount": "12.5", "qty": "3", "paid": "yes", "n": 7});
        assert_eq!(
            run(cast, v).unwrap(),
            json!({"amount": 12.5, "qty": 3, "paid": true, "n": "7"})
        );
        let e = run(cast, json!({"qty": "three"})).unwrap_err();
        assert_eq!(e, r#"qty: "three" cannot be cast to integer"#);
        assert!(run(cast, json!({"qty": 2.5})).is_err());
        assert_eq!(run(cast, json!({"qty": "3.0"})).unwrap()["qty"], json!(3));
        assert!(run(cast, json!({"qty": "3.5"})).is_err());
        let ts = "type: timestamp\nfield: t\nparse: unix_s";
        assert_eq!(run(ts, json!({"t": null})).unwrap(), json!({"t": null}));
        assert_eq!(
            run(cast, json!({"qty": null})).unwrap(),
            json!({"qty": null})
        );
        assert!(run(cast, json!([1])).unwrap_err().contains("not an object"));
    }

    #[test]
    fn flatten_joins_nested_keys() {
        let v = json!({"a": {"b": {"c": 1}, "d": [1, {"e": 2}]}, "f": {}});
        assert_eq!(
            run("type: flatten", v.clone()).unwrap(),
            json!({"a.b.c": 1, "a.d": [1, {"e": 2}], "f": {}})
        );
        assert_eq!(
            run("type: flatten\nseparator: _", v).unwrap()["a_b_c"],
            json!(1)
        );
    }

    #[test]
    fn what_a_hostile_probe_found() {
        // A path inside another kept one is kept with it, in any order.
        let v = json!({"a": {"b": 1, "c": 2}, "d": 3});
        assert_eq!(
            run("type: keep\nfields: [a.b, a]", v.clone()).unwrap(),
            json!({"a": {"b": 1, "c": 2}})
        );
        // Keys that flatten into one are a failed record, not a lost value.
        let e = run("type: flatten", json!({"a": {"b": 1}, "a.b": 9})).unwrap_err();
        assert!(e.contains("\"a.b\""), "{e}");
        // Targets that overwrite each other, paths too deep, `${` in a key.
        for bad in [
            "type: rename\nfields: {x: y, z: y}",
            "type: set\nfields: {a: 1, a.b: 2}",
            "type: cast\nfields: {'${FP}': integer}",
        ] {
            let c: TransformConfig = serde_yaml::from_str(bad).unwrap();
            assert!(Step::compile(&c).is_err(), "{bad}");
        }
        let deep = vec!["a"; 101].join(".");
        let c: TransformConfig =
            serde_yaml::from_str(&format!("type: drop\nfields: ['{deep}']")).unwrap();
        assert!(Step::compile(&c).is_err());
    }

    #[test]
    fn bad_field_paths_are_named_all_at_once() {
        let c: TransformConfig =
            serde_yaml::from_str("type: rename\nfields: {'a..b': c, d: '.e'}").unwrap();
        let problems = Step::compile(&c).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
