use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use ferry_api::{
    BuildContext, ConfigProblem, ConnectorError, Delivery, Sink, SinkConfig, Source, SourceConfig,
};
use serde::Deserialize;

use crate::sink::FileSink;
use crate::source::FileSource;

/// How lines map to records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Json,
    /// One line is one record: a JSON string.
    Text,
    /// A header row, then one record per row: an object of strings.
    Csv,
}

impl Format {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Text => "text",
            Format::Csv => "csv",
        }
    }
}

/// `source: {type: file, ...}`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A file, or a glob such as `/data/in/*.jsonl`. Files that match later are
    /// picked up as they appear.
    pub path: String,
    /// `json` (default), `text` or `csv`.
    #[serde(default)]
    pub format: Format,
    /// How often files are checked for growth when no filesystem event came.
    #[serde(default = "default_poll_interval", with = "ferry_api::duration")]
    #[schemars(with = "ferry_api::duration::Text")]
    pub poll_interval: Duration,
    /// A longer line is dead-lettered (or stops the pipeline) instead of
    /// being held in memory.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}

/// The longest line a source may hold in memory.
const MAX_LINE_BYTES: usize = 1 << 30;

fn default_max_line_bytes() -> usize {
    1 << 20
}

#[async_trait]
impl SourceConfig for FileSourceConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.path.trim().is_empty() {
            problems.push(ConfigProblem::at("path", "must not be empty"));
        } else if let Err(e) = glob::Pattern::new(&self.path) {
            problems.push(ConfigProblem::at("path", format!("invalid glob: {e}")));
        }
        if self.poll_interval.is_zero() {
            problems.push(ConfigProblem::at("poll_interval", "must be more than 0"));
        }
        if !(16..=MAX_LINE_BYTES).contains(&self.max_line_bytes) {
            problems.push(ConfigProblem::at(
                "max_line_bytes",
                format!("must be between 16 and {MAX_LINE_BYTES} (1 GiB)"),
            ));
        }
        problems
    }

    fn describe(&self) -> String {
        format!("file {} ({})", self.path, self.format.name())
    }

    fn local_inputs(&self) -> Vec<(&'static str, String)> {
        vec![("path", self.path.clone())]
    }

    async fn backlog(
        &self,
        ctx: &BuildContext,
    ) -> Result<Option<Box<dyn ferry_api::Backlog>>, ConnectorError> {
        let glob = crate::paths::Glob::new(&self.path)
            .map_err(|e| ConnectorError::Fatal(format!("path: invalid glob: {e}")))?;
        Ok(Some(Box::new(crate::backlog::FileBacklog {
            glob,
            writes: ctx.writes.clone(),
        })))
    }

    /// A byte offset at the start of a line of a file this pipeline has
    /// committed (a file not yet committed is read from its start).
    async fn resume_point(
        &self,
        _: &BuildContext,
        partition: &str,
        offset: &ferry_api::Value,
        committed: Option<&ferry_api::Position>,
    ) -> Result<ferry_api::Position, ConnectorError> {
        let position = ferry_api::committed_partition_at(offset, committed)?;
        let Some(at) = offset.as_u64() else {
            return Err(ConnectorError::Fatal(
                "a file's offset is a byte offset, a whole number (null: read the file from its start)"
                    .to_string(),
            ));
        };
        let Some(path) = position.partition.info.get("path").and_then(|p| p.as_str()) else {
            return Err(ConnectorError::Fatal(format!(
                "{partition:?} is not a file's partition"
            )));
        };
        let (path, key, csv) = (
            PathBuf::from(path),
            partition.to_string(),
            self.format == Format::Csv,
        );
        tokio::task::spawn_blocking(move || crate::source::check_line_start(&path, &key, at, csv))
            .await
            .map_err(|e| ConnectorError::Fatal(format!("checking the offset: {e}")))??;
        Ok(position)
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(FileSource::new(
            self.clone(),
            ctx.once,
            ctx.writes.clone(),
        )))
    }
}

/// `sink: {type: file, ...}`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The output file; its folder is created when missing.
    pub path: PathBuf,
    /// `json` (default), `text` or `csv`.
    #[serde(default)]
    pub format: Format,
    /// `true` (default): keep `<path>.ferry-manifest` with the committed
    /// length and positions, exactly-once. `false`: plain appends, positions
    /// in the runtime's offset store, at-least-once.
    #[serde(default = "yes")]
    pub transactional: bool,
    /// CSV only: the columns, in order. Default: the fields of the first record.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

#[async_trait]
impl SinkConfig for FileSinkConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push(ConfigProblem::at("path", "must not be empty"));
        } else if self.path.file_name().is_none() {
            problems.push(ConfigProblem::at("path", "must name a file, not a folder"));
        }
        if self.columns.is_some() && self.format != Format::Csv {
            problems.push(ConfigProblem::at("columns", "only applies to format: csv"));
        }
        if let Some(cols) = &self.columns
            && cols.is_empty()
        {
            problems.push(ConfigProblem::at(
                "columns",
                "must list at least one column",
            ));
        }
        problems
    }

    fn describe(&self) -> String {
        format!("file {} ({})", self.path.display(), self.format.name())
    }

    fn local_outputs(&self) -> Vec<(&'static str, PathBuf)> {
        let mut manifest = self.path.clone().into_os_string();
        manifest.push(".ferry-manifest");
        let mut out = vec![("path", self.path.clone())];
        if self.transactional {
            out.push(("path", PathBuf::from(manifest)));
        }
        out
    }

    fn delivery(&self) -> Delivery {
        if self.transactional {
            Delivery::Transactional
        } else {
            Delivery::AtLeastOnce
        }
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(FileSink::new(self.clone(), ctx.pipeline.clone())))
    }
}
