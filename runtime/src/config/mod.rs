//! Pipeline definitions: one YAML file per pipeline.
//!
//! Loading a file never does I/O beyond reading it, and never stops at the
//! first mistake: every unknown key, wrong type and missing key of the file is
//! reported with its file, line, column and key path. Connector sections are
//! handed to the connector named by their `type` through the [`Registry`].

mod env;
mod loader;
mod local_files;
pub use local_files::{reload_conflicts, run_conflicts};
mod marks;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::{ConfigProblem, FieldError, Misfit, PathSegment, SinkConfig, SourceConfig, Value};
use serde::Deserialize;

use crate::registry::Registry;
pub use env::Secrets;
use loader::Loader;
pub use loader::path_string;
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum Tolerance {
    /// Stop the pipeline, naming the record and its position.
    #[default]
    None,
    /// Write it to the dead-letter file and go on.
    All,
}

/// `delivery:` — how records are batched into sink commits.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Records per sink commit. A commit costs an fsync or a transaction,
    /// so fewer, larger commits are faster; memory does not depend on it
    /// (records are written in chunks of at most 1000 as they arrive).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A partial batch is committed after this long.
    #[serde(default = "default_flush_interval", with = "ferry_api::duration")]
    #[schemars(with = "ferry_api::duration::Text")]
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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    #[serde(default)]
    pub tolerance: Tolerance,
    /// Dead-letter file (JSON lines). Default: `<data-dir>/dlq/<pipeline>.jsonl`.
    #[serde(default)]
    pub dead_letter: Option<PathBuf>,
    /// First wait before retrying a retriable failure; doubles each time.
    #[serde(default = "default_retry_backoff", with = "ferry_api::duration")]
    #[schemars(with = "ferry_api::duration::Text")]
    pub retry_backoff: Duration,
    /// Longest wait between restarts. After a retriable failure the pipeline
    /// starts again from its committed positions, until it succeeds or ferry
    /// is stopped: it pauses, it does not die.
    #[serde(default = "default_retry_backoff_max", with = "ferry_api::duration")]
    #[schemars(with = "ferry_api::duration::Text")]
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
    /// `transforms:`, compiled (empty without them).
    pub transforms: std::sync::Arc<crate::transform::Chain>,
    /// The file's content as parsed, `${ENV}` substituted: a reload
    /// compares it to tell a changed pipeline from a file saved unchanged.
    /// Holds the secrets: never logged.
    pub definition: Value,
}

impl PipelineConfig {
    /// The local files this pipeline writes: its sink's outputs and its
    /// dead-letter file (what its source must not read back).
    pub fn local_writes(&self, data_dir: &Path) -> Vec<PathBuf> {
        let mut writes: Vec<PathBuf> = self
            .sink
            .local_outputs()
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        writes.push(self.dead_letter_path(data_dir));
        writes
    }

    /// Where this pipeline's dead letters go: `errors.dead_letter`, or
    /// `<data-dir>/dlq/<name>.jsonl`.
    pub fn dead_letter_path(&self, data_dir: &Path) -> PathBuf {
        self.errors
            .dead_letter
            .clone()
            .unwrap_or_else(|| data_dir.join("dlq").join(format!("{}.jsonl", self.name)))
    }
}

/// Whether `s` is a pipeline's name: letters, digits, `-`, `_` and `.`, at
/// most 100, not starting with `.`. Names become file names (offsets, dead
/// letters) and parts of the API's paths.
pub fn is_pipeline_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

const TOP_KEYS: &[&str] = &["name", "source", "transforms", "sink", "delivery", "errors"];

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
pub(crate) fn expand_existing(paths: &[PathBuf]) -> Vec<PathBuf> {
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
                            // Hidden files are editors' locks and backups
                            // (`.#p.yaml`, `.p.yaml.swp`), not pipelines.
                            let hidden = f
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                            !hidden
                                && f.is_file()
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
    // A file named twice (`cfg cfg/p.yaml`) is one pipeline file.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(local_files::normalize(f)));
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
        let text = match read_file(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
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

/// Loads the pipeline of one file, with every error it has.
pub fn load_file(file: &Path, registry: &Registry) -> Result<PipelineConfig, ConfigErrors> {
    let text = read_file(file).map_err(|e| ConfigErrors(vec![e]))?;
    load_str(file, &text, registry, &|name| std::env::var(name).ok())
}

fn read_file(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| whole_file_error(file, format!("cannot read: {e}")))
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
        typed_env: Vec::new(),
    };
    let value = cx.json_value(yaml, "", lookup);
    let pipeline = cx
        .pipeline(value.clone(), registry)
        .map(|p| PipelineConfig {
            definition: value,
            ..p
        });
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

#[cfg(test)]
mod tests;
