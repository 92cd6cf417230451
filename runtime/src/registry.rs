//! The built-in connectors, listed explicitly: one entry per connector, each
//! behind its Cargo feature. No link-time magic: what is here is what exists.

use ferry_api::{SinkPlugin, SourcePlugin};

/// Connector types ferry knows of, and the feature that builds each. Lets a
/// config naming a connector left out of this build say which feature is off.
const ALL_TYPES: &[(&str, &str)] = &[
    ("file", "file"),
    ("postgres", "postgres"),
    ("kafka", "kafka"),
    ("mongodb", "mongodb"),
    ("elasticsearch", "elasticsearch"),
    ("generate", "generate"),
];

pub struct Registry {
    sources: Vec<SourcePlugin>,
    sinks: Vec<SinkPlugin>,
}

impl Registry {
    /// Every connector compiled into this build.
    pub fn builtin() -> Registry {
        #[allow(unused_mut)]
        let mut r = Registry {
            sources: Vec::new(),
            sinks: Vec::new(),
        };
        #[cfg(feature = "file")]
        {
            r.sources.push(ferry_connector_file::source_plugin());
            r.sinks.push(ferry_connector_file::sink_plugin());
        }
        #[cfg(feature = "postgres")]
        {
            r.sources.push(ferry_connector_postgres::source_plugin());
            r.sinks.push(ferry_connector_postgres::sink_plugin());
        }
        #[cfg(feature = "kafka")]
        {
            r.sources.push(ferry_connector_kafka::source_plugin());
            r.sinks.push(ferry_connector_kafka::sink_plugin());
        }
        #[cfg(feature = "mongodb")]
        {
            r.sources.push(ferry_connector_mongodb::source_plugin());
            r.sinks.push(ferry_connector_mongodb::sink_plugin());
        }
        #[cfg(feature = "elasticsearch")]
        r.sinks.push(ferry_connector_elasticsearch::sink_plugin());
        #[cfg(feature = "generate")]
        r.sources.push(ferry_connector_generate::source_plugin());
        r
    }

    pub fn source(&self, kind: &str) -> Option<&SourcePlugin> {
        self.sources.iter().find(|p| p.kind == kind)
    }

    pub fn sink(&self, kind: &str) -> Option<&SinkPlugin> {
        self.sinks.iter().find(|p| p.kind == kind)
    }

    /// Every source connector, in the order of [`Registry::builtin`].
    pub fn sources(&self) -> &[SourcePlugin] {
        &self.sources
    }

    pub fn sinks(&self) -> &[SinkPlugin] {
        &self.sinks
    }

    pub fn source_kinds(&self) -> Vec<&'static str> {
        self.sources.iter().map(|p| p.kind).collect()
    }

    pub fn sink_kinds(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|p| p.kind).collect()
    }
}

/// The Cargo feature that builds connector `kind`, if ferry has one.
pub fn feature_of(kind: &str) -> Option<&'static str> {
    ALL_TYPES.iter().find(|(k, _)| *k == kind).map(|(_, f)| *f)
}
