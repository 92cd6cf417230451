//! Pipeline definitions: one YAML file per pipeline.
//!
//! Loading a file never does I/O beyond reading it, and never stops at the
//! first mistake: every unknown key, wrong type and missing key of the file is
//! reported with its file, line, column and key path. Connector sections are
//! handed to the connector named by their `type` through the [`Registry`].

mod env;
mod local_files;
pub use local_files::run_conflicts;
mod marks;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::{ConfigProblem, FieldError, PathSegment, SinkConfig, SourceConfig, Value};
use serde::Deserialize;

use crate::registry::Registry;
pub use env::Secrets;
pub use marks::{Loc, Marks};

/// A mistake in a pipeline file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub loc: Loc,
    /// The key path, e.g. `sink.batch_size`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: ",
            self.file.display(),
            self.loc.line,
            self.loc.column
        )?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every mistake found in a set of pipeline files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// What a pipeline does with a record it cannot deliver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tolerance {
    /// Stop the pipeline, naming the record and its position.
    #[default]
    None,
    /// Write it to the dead-letter file and go on.
    All,
}

/// `delivery:` — how records are batched into sink commits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Records per sink commit. A commit costs an fsync or a transaction,
    /// so fewer, larger commits are faster; memory does not depend on it
    /// (records are written in chunks of at most 1000 as they arrive).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A partial batch is committed after this long.
    #[serde(default = "default_flush_interval", with = "ferry_api::duration")]
    pub flush_interval: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            batch_size: default_batch_size(),
            flush_interval: default_flush_interval(),
        }
    }
}

fn default_batch_size() -> usize {
    10_000
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

/// `errors:` — tolerance, dead letters and retries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    #[serde(default)]
    pub tolerance: Tolerance,
    /// Dead-letter file (JSON lines). Default: `<data-dir>/dlq/<pipeline>.jsonl`.
    #[serde(default)]
    pub dead_letter: Option<PathBuf>,
    /// First wait before retrying a retriable failure; doubles each time.
    #[serde(default = "default_retry_backoff", with = "ferry_api::duration")]
    pub retry_backoff: Duration,
    /// Longest wait between restarts. After a retriable failure the pipeline
    /// starts again from its committed positions, until it succeeds or ferry
    /// is stopped: it pauses, it does not die.
    #[serde(default = "default_retry_backoff_max", with = "ferry_api::duration")]
    pub retry_backoff_max: Duration,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        ErrorsConfig {
            tolerance: Tolerance::None,
            dead_letter: None,
            retry_backoff: default_retry_backoff(),
            retry_backoff_max: default_retry_backoff_max(),
        }
    }
}

fn default_retry_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_retry_backoff_max() -> Duration {
    Duration::from_secs(30)
}

/// A loaded, validated pipeline.
#[derive(Debug)]
pub struct PipelineConfig {
    pub name: String,
    pub file: PathBuf,
    pub source_type: String,
    pub source: Box<dyn SourceConfig>,
    pub sink_type: String,
    pub sink: Box<dyn SinkConfig>,
    pub delivery: DeliveryConfig,
    pub errors: ErrorsConfig,
}

impl PipelineConfig {
    /// Where this pipeline's dead letters go: `errors.dead_letter`, or
    /// `<data-dir>/dlq/<name>.jsonl`.
    pub fn dead_letter_path(&self, data_dir: &Path) -> PathBuf {
        self.errors
            .dead_letter
            .clone()
            .unwrap_or_else(|| data_dir.join("dlq").join(format!("{}.jsonl", self.name)))
    }
}

const TOP_KEYS: &[&str] = &["name", "source", "sink", "delivery", "errors"];

/// Expands `paths` and loads every file found; the errors of paths that
/// are missing come together with those of the files that are there.
pub fn load_paths(
    paths: &[PathBuf],
    registry: &Registry,
) -> Result<Vec<PipelineConfig>, ConfigErrors> {
    let (files, mut errors) = match expand_paths(paths) {
        Ok(files) => (files, Vec::new()),
        Err(e) => (expand_existing(paths), e.0),
    };
    match load_all(&files, registry) {
        Ok(pipelines) if errors.is_empty() => Ok(pipelines),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(e) => {
            errors.extend(e.0);
            Err(ConfigErrors(errors))
        }
    }
}

/// The files of `paths` that exist (after a missing path was reported).
fn expand_existing(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| p.exists())
        .filter_map(|p| expand_paths(std::slice::from_ref(p)).ok())
        .flatten()
        .collect()
}

/// Expands the paths given on the command line: files as they are, folders
/// to their `*.yaml` / `*.yml` files (not recursively), sorted.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| {
                            f.is_file()
                                && matches!(
                                    f.extension().and_then(|e| e.to_str()),
                                    Some("yaml" | "yml")
                                )
                        })
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => errors.push(whole_file_error(p, format!("cannot read folder: {e}"))),
            }
        } else if p.exists() {
            files.push(p.clone());
        } else {
            errors.push(whole_file_error(p, "no such file or folder".to_string()));
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn whole_file_error(file: &Path, message: String) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        loc: Loc::START,
        path: String::new(),
        message,
    }
}

/// Loads every file; returns all pipelines, or every error of every file.
/// Also checks what no single file can: that pipeline names are unique.
pub fn load_all(
    files: &[PathBuf],
    registry: &Registry,
) -> Result<Vec<PipelineConfig>, ConfigErrors> {
    let lookup = |name: &str| std::env::var(name).ok();
    let mut pipelines: Vec<PipelineConfig> = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(whole_file_error(file, format!("cannot read: {e}")));
                continue;
            }
        };
        match load_str(file, &text, registry, &lookup) {
            Ok(p) => {
                errors.extend(shared_outputs(&p, &pipelines, &text));
                if let Some(other) = pipelines.iter().find(|o| o.name == p.name) {
                    errors.push(ConfigError {
                        file: file.clone(),
                        loc: Marks::index(&text).value("name"),
                        path: "name".into(),
                        message: format!(
                            "pipeline name {:?} is already used by {}: names must be unique (offsets are stored under them)",
                            p.name,
                            other.file.display()
                        ),
                    });
                } else {
                    pipelines.push(p);
                }
            }
            Err(mut e) => errors.append(&mut e.0),
        }
    }
    if errors.is_empty() {
        Ok(pipelines)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The files `p` writes that an earlier pipeline writes too.
fn shared_outputs(p: &PipelineConfig, earlier: &[PipelineConfig], text: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let marks = Marks::index(text);
    for w in local_files::written(p) {
        for other in earlier {
            if let Some(o) = local_files::written(other)
                .into_iter()
                .find(|o| o.path == w.path)
            {
                errors.push(ConfigError {
                    file: p.file.clone(),
                    loc: marks.value(&w.key),
                    path: w.key.clone(),
                    message: format!(
                        "writes {}, which pipeline {} ({}) writes too ({}): two writers of one \
                         file would corrupt it",
                        w.path.display(),
                        other.name,
                        other.file.display(),
                        o.key
                    ),
                });
                break;
            }
        }
    }
    errors.dedup_by(|a, b| a.path == b.path);
    errors
}

/// Loads one pipeline from its text. `lookup` reads the environment.
pub fn load_str(
    file: &Path,
    text: &str,
    registry: &Registry,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, ConfigErrors> {
    // Editors on Windows start a file with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let marks = Marks::index(text);
    if !marks.duplicates().is_empty() {
        return Err(ConfigErrors(
            marks
                .duplicates()
                .iter()
                .map(|(path, loc)| ConfigError {
                    file: file.to_path_buf(),
                    loc: *loc,
                    path: path.clone(),
                    message: "this key is written twice in its mapping (remove one)".into(),
                })
                .collect(),
        ));
    }
    let yaml: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let loc = e.location().map_or(Loc::START, |l| Loc {
                line: l.line(),
                column: l.column(),
            });
            let (path, message) = yaml_error(&e.to_string());
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                loc,
                path,
                message,
            }]));
        }
    };
    let mut cx = Loader {
        file,
        marks,
        secrets: Secrets::default(),
        errors: Vec::new(),
        env_failed: Vec::new(),
    };
    let value = cx.json_value(yaml, "", lookup);
    let pipeline = cx.pipeline(value, registry);
    // Redact at the very end: a message may quote any value of the file.
    let secrets = cx.secrets;
    let env_failed = cx.env_failed;
    let mut errors = cx.errors;
    // A value whose variable is unset was reported as such: drop the errors
    // that only follow from the value being missing.
    errors
        .retain(|e| !env_failed.contains(&e.path) || e.message.starts_with("environment variable"));
    for e in &mut errors {
        e.message = secrets.redact(&e.message);
    }
    // From now on no log line or message shows them either.
    for v in secrets.values() {
        crate::redact::register(v);
    }
    errors.sort_by_key(|e| (e.loc.line, e.loc.column));
    match pipeline {
        Some(p) if errors.is_empty() => Ok(p),
        _ => Err(ConfigErrors(errors)),
    }
}

/// serde_yaml's error in ferry's words: a whole number past 64 bits is
/// valid YAML (serde_yaml reads it as a 128-bit integer, which its values
/// cannot hold), so it is said to be out of range, at its key.
fn yaml_error(text: &str) -> (String, String) {
    let head = text.split(" at line ").next().unwrap_or(text);
    if let Some((path, rest)) = head.split_once(": invalid type: integer `")
        && let Some((number, _)) = rest.split_once("` as ")
    {
        return (
            path.to_string(),
            format!(
                "the number {number} is out of range (whole numbers go up to 18446744073709551615)"
            ),
        );
    }
    (String::new(), format!("not valid YAML: {text}"))
}

struct Loader<'a> {
    file: &'a Path,
    marks: Marks,
    secrets: Secrets,
    errors: Vec<ConfigError>,
    /// Paths whose `${VAR}` is unset.
    env_failed: Vec<String>,
}

enum At {
    Key,
    Value,
}

impl Loader<'_> {
    fn error(&mut self, path: &str, at: At, message: impl Into<String>) {
        let loc = match at {
            At::Key => self.marks.key(path),
            At::Value => self.marks.value(path),
        };
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            loc,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// YAML → JSON value, substituting `${NAME}` in strings.
    fn json_value(
        &mut self,
        v: serde_yaml::Value,
        path: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Value {
        use serde_yaml::Value as Y;
        match v {
            Y::Null => Value::Null,
            Y::Bool(b) => Value::Bool(b),
            Y::Number(n) => serde_json::to_value(&n).unwrap_or(Value::Null),
            Y::String(s) => self.substitute(&s, path, lookup),
            Y::Sequence(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.json_value(item, &format!("{path}[{i}]"), lookup))
                    .collect(),
            ),
            Y::Mapping(map) => {
                let mut out = serde_json::Map::new();
                for (k, item) in map {
                    let key = match k {
                        Y::String(s) => s,
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        other => {
                            self.error(
                                path,
                                At::Value,
                                format!("keys must be strings, found {other:?}"),
                            );
                            continue;
                        }
                    };
                    let child = join(path, &key);
                    let value = self.json_value(item, &child, lookup);
                    out.insert(key, value);
                }
                Value::Object(out)
            }
            Y::Tagged(t) => self.json_value(t.value, path, lookup),
        }
    }

    fn substitute(
        &mut self,
        s: &str,
        path: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Value {
        if !s.contains('$') {
            return Value::String(s.to_string());
        }
        match env::substitute(s, lookup, &mut self.secrets) {
            // A value that is only `${NAME}` takes the type its text has in
            // YAML, so `port: ${PORT}` is a number.
            Ok(out) if is_single_reference(s) => {
                match serde_yaml::from_str::<serde_yaml::Value>(&out) {
                    Ok(serde_yaml::Value::Bool(b)) => Value::Bool(b),
                    Ok(serde_yaml::Value::Number(n)) => {
                        serde_json::to_value(&n).unwrap_or(Value::String(out))
                    }
                    _ => Value::String(out),
                }
            }
            Ok(out) => Value::String(out),
            Err(missing) => {
                self.env_failed.push(path.to_string());
                for name in missing {
                    self.error(path, At::Value, format!("environment variable {name} is not set (write ${{{name}:-default}} for a default)"));
                }
                Value::Null
            }
        }
    }

    fn pipeline(&mut self, value: Value, registry: &Registry) -> Option<PipelineConfig> {
        let Value::Object(mut top) = value else {
            self.error(
                "",
                At::Value,
                "a pipeline file must be a mapping with the keys name, source and sink",
            );
            return None;
        };
        for key in top.keys() {
            if !TOP_KEYS.contains(&key.as_str()) {
                let msg = format!(
                    "unknown key `{key}`, expected one of {}",
                    TOP_KEYS.join(", ")
                );
                self.error(key, At::Key, msg);
            }
        }
        for key in ["name", "source", "sink"] {
            if !top.contains_key(key) {
                self.error("", At::Key, format!("missing key `{key}`"));
            }
        }
        let name = top.remove("name").and_then(|v| self.name(v));
        let source = top.remove("source").and_then(|v| {
            self.connector(
                v,
                "source",
                |k| registry.source(k).map(|p| p.parse),
                registry.source_kinds(),
                |c| c.validate(),
            )
        });
        let sink = top.remove("sink").and_then(|v| {
            self.connector(
                v,
                "sink",
                |k| registry.sink(k).map(|p| p.parse),
                registry.sink_kinds(),
                |c| c.validate(),
            )
        });
        let delivery = match top.remove("delivery") {
            Some(v) => self.section(
                &v,
                "delivery",
                ferry_api::deserialize::<DeliveryConfig>,
                delivery_problems,
            ),
            None => Some(DeliveryConfig::default()),
        };
        let errors = match top.remove("errors") {
            Some(v) => self.section(
                &v,
                "errors",
                ferry_api::deserialize::<ErrorsConfig>,
                errors_problems,
            ),
            None => Some(ErrorsConfig::default()),
        };
        let ((source_type, source), (sink_type, sink)) = (source?, sink?);
        let mut delivery = delivery?;
        // A sink's own batching setting (Elasticsearch's
        // `bulk.flush_interval`) shortens the pipeline's.
        if let Some(interval) = sink.flush_interval() {
            delivery.flush_interval = delivery.flush_interval.min(interval);
        }
        let pipeline = PipelineConfig {
            name: name?,
            file: self.file.to_path_buf(),
            source_type,
            source,
            sink_type,
            sink,
            delivery,
            errors: errors?,
        };
        for (key, message) in local_files::own_problems(&pipeline) {
            self.error(&key, At::Value, message);
        }
        Some(pipeline)
    }

    fn name(&mut self, v: Value) -> Option<String> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !s.starts_with('.')
        };
        match v {
            Value::String(s) if ok(&s) => Some(s),
            _ => {
                self.error("name", At::Value, "must be a string of letters, digits, '-', '_' and '.' (at most 100, not starting with '.')");
                None
            }
        }
    }

    /// A `source:` or `sink:` section: find the connector by `type`, parse the
    /// rest with it, then run its checks.
    fn connector<C: ?Sized>(
        &mut self,
        v: Value,
        section: &str,
        find: impl Fn(&str) -> Option<fn(&Value) -> Result<Box<C>, FieldError>>,
        kinds: Vec<&'static str>,
        validate: impl Fn(&C) -> Vec<ConfigProblem>,
    ) -> Option<(String, Box<C>)> {
        let Value::Object(mut map) = v else {
            self.error(
                section,
                At::Value,
                format!(
                    "must be a mapping with a `type` key (one of {})",
                    kinds.join(", ")
                ),
            );
            return None;
        };
        let kind = match map.remove("type") {
            Some(Value::String(s)) => s,
            Some(_) => {
                self.error(&join(section, "type"), At::Value, "must be a string");
                return None;
            }
            None => {
                self.error(
                    section,
                    At::Key,
                    format!("missing key `type` (one of {})", kinds.join(", ")),
                );
                return None;
            }
        };
        let Some(parse) = find(&kind) else {
            let hint = match crate::registry::feature_of(&kind) {
                Some(feature) => format!("; this ferry was built without the `{feature}` feature"),
                None => String::new(),
            };
            let msg = format!(
                "unknown {section} type `{kind}`, expected one of {}{hint}",
                kinds.join(", ")
            );
            self.error(&join(section, "type"), At::Value, msg);
            return None;
        };
        let check = |c: &Box<C>| validate(c).into_iter().map(|p| (p, At::Value)).collect();
        let config = self.section(&Value::Object(map), section, parse, check)?;
        Some((kind, config))
    }

    /// Deserializes a section, collecting every error: after each error the
    /// offending key is removed and the section parsed again, until it parses
    /// or an error (a missing key) cannot be stepped over.
    ///
    /// Then `check` runs on what parsed — also when keys had to be removed
    /// (they took their defaults), so its problems come in the same report
    /// as the parse errors, not after those are fixed; a problem at a key
    /// that was removed or stood in for is not reported (it was already).
    fn section<T>(
        &mut self,
        v: &Value,
        section: &str,
        parse: impl Fn(&Value) -> Result<T, FieldError>,
        check: impl Fn(&T) -> Vec<(ConfigProblem, At)>,
    ) -> Option<T> {
        let mut value = v.clone();
        let mut removed: Vec<Vec<PathSegment>> = Vec::new();
        // Missing keys given a stand-in value, so the parse goes on to the
        // next missing key (serde stops at the first), with the index of the
        // kind of value tried: one of the right type is kept.
        let mut stand_ins: Vec<(Vec<PathSegment>, usize)> = Vec::new();
        let mut failed = false;
        for _ in 0..200 {
            let err = match parse(&value) {
                Ok(t) => {
                    let skipped: Vec<&Vec<PathSegment>> = removed
                        .iter()
                        .chain(stand_ins.iter().map(|(p, _)| p))
                        .collect();
                    let mut clean = !failed;
                    for (p, at) in check(&t) {
                        if skipped.iter().any(|s| p.path.starts_with(s)) {
                            continue;
                        }
                        clean = false;
                        self.error(&join(section, &path_string(&p.path)), at, p.message);
                    }
                    return clean.then_some(t);
                }
                Err(e) => e,
            };
            failed = true;
            if let Some(slot) = stand_ins.iter_mut().find(|(p, _)| err.path.starts_with(p)) {
                // The stand-in has the wrong type (or shape): try the next.
                slot.1 += 1;
                let Some(stand_in) = stand_in(slot.1) else {
                    return None;
                };
                if !insert_at(&mut value, &slot.0, stand_in) {
                    return None;
                }
            } else if let Some(field) = backticked(&err.message, "unknown field `") {
                let mut path = err.path.clone();
                if path.last() != Some(&PathSegment::Key(field.clone())) {
                    path.push(PathSegment::Key(field.clone()));
                }
                let expected = err
                    .message
                    .split_once(", expected ")
                    .map(|(_, e)| format!(", expected {e}"))
                    .unwrap_or_default();
                self.error(
                    &join(section, &path_string(&path)),
                    At::Key,
                    format!("unknown key `{field}`{expected}"),
                );
                if !remove_at(&mut value, &path) {
                    return None;
                }
                removed.push(path);
            } else if let Some(field) = backticked(&err.message, "missing field `") {
                let mut path = err.path.clone();
                path.push(PathSegment::Key(field.clone()));
                // A key we removed after reporting it is missing now: said already.
                if !removed.contains(&path) {
                    let at = join(section, &path_string(&path));
                    self.error(&at, At::Key, format!("missing key `{field}`"));
                }
                if !insert_at(&mut value, &path, stand_in(0).expect("one kind at least")) {
                    return None;
                }
                stand_ins.push((path, 0));
            } else {
                let at = join(section, &path_string(&err.path));
                let message = match value_at(&value, &err.path) {
                    // serde_json's words for a number that does not fit the
                    // key's type (numbers are kept as exact text).
                    Some(Value::Number(n)) if err.message == "invalid number" => format!(
                        "invalid value: number {n}, expected a whole number in the range this key takes"
                    ),
                    _ => err.message.clone(),
                };
                self.error(&at, At::Value, message);
                if matches!(err.path.last(), None | Some(PathSegment::Index(_)))
                    || !remove_at(&mut value, &err.path)
                {
                    return None;
                }
                removed.push(err.path);
            }
        }
        None
    }
}

/// `delivery:` checks beyond its types.
fn delivery_problems(d: &DeliveryConfig) -> Vec<(ConfigProblem, At)> {
    let mut problems = Vec::new();
    if d.batch_size == 0 || d.batch_size > 1_000_000 {
        let p = ConfigProblem::at("batch_size", "must be between 1 and 1000000");
        problems.push((p, At::Value));
    }
    if d.flush_interval.is_zero() {
        let p = ConfigProblem::at("flush_interval", "must be more than 0");
        problems.push((p, At::Value));
    }
    problems
}

/// `errors:` checks beyond its types.
fn errors_problems(e: &ErrorsConfig) -> Vec<(ConfigProblem, At)> {
    let mut problems = Vec::new();
    if e.retry_backoff.is_zero() || e.retry_backoff > e.retry_backoff_max {
        let p = ConfigProblem::at(
            "retry_backoff",
            "must be more than 0 and at most retry_backoff_max",
        );
        problems.push((p, At::Value));
    }
    if e.dead_letter.is_some() && e.tolerance == Tolerance::None {
        let p = ConfigProblem::at("dead_letter", "is only used with tolerance: all");
        problems.push((p, At::Key));
    }
    problems
}

fn is_single_reference(s: &str) -> bool {
    s.starts_with("${") && s.ends_with('}') && s[2..].find('}') == Some(s.len() - 3)
}

fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest[..rest.find('`')?].to_string())
}

fn value_at<'v>(value: &'v Value, path: &[PathSegment]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        PathSegment::Key(k) => v.get(k),
        PathSegment::Index(i) => v.get(i),
    })
}

/// The kinds of value a missing key is given in turn, to parse on.
fn stand_in(kind: usize) -> Option<Value> {
    Some(match kind {
        0 => Value::Null,
        1 => Value::String(String::new()),
        2 => Value::from(1),
        3 => Value::Bool(false),
        4 => Value::Array(Vec::new()),
        5 => Value::Object(serde_json::Map::new()),
        _ => return None,
    })
}

/// Sets the value at `path` (its parent must be an object).
fn insert_at(value: &mut Value, path: &[PathSegment], new: Value) -> bool {
    match parent_object(value, path) {
        Some((map, key)) => {
            map.insert(key.clone(), new);
            true
        }
        None => false,
    }
}

fn remove_at(value: &mut Value, path: &[PathSegment]) -> bool {
    parent_object(value, path).is_some_and(|(map, key)| map.remove(key).is_some())
}

/// The object holding the last key of `path`, and that key.
fn parent_object<'v, 'p>(
    value: &'v mut Value,
    path: &'p [PathSegment],
) -> Option<(&'v mut serde_json::Map<String, Value>, &'p String)> {
    let (PathSegment::Key(last), parents) = path.split_last()? else {
        return None;
    };
    let mut v = value;
    for seg in parents {
        v = match (seg, v) {
            (PathSegment::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (PathSegment::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    match v {
        Value::Object(m) => Some((m, last)),
        _ => None,
    }
}

/// `a.b[2].c` from path segments.
pub fn path_string(path: &[PathSegment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            PathSegment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathSegment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

#[cfg(test)]
mod tests;
