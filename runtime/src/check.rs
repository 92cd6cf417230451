//! `ferry validate --check-connections`: each connector checks what it
//! needs, within a time limit.

use std::time::Duration;

use ferry_api::BuildContext;

use crate::config::PipelineConfig;

/// `ferry validate --check-connections`: asks every source and sink to check
/// what it needs (a server that answers, a table that exists),
/// each within 15 seconds. Returns one line per problem, naming the file and
/// pipeline.
pub async fn check_connections(pipelines: &[PipelineConfig]) -> Vec<String> {
    const LIMIT: Duration = Duration::from_secs(15);
    let mut problems = Vec::new();
    // One pipeline after another (source and sink together): a handful of
    // files, and the timeouts bound the wait.
    for p in pipelines {
        let ctx = BuildContext {
            pipeline: p.name.clone(),
            once: false,
            stopping: ferry_api::Stopping::never(),
            writes: Vec::new(),
            retries: ferry_api::Retries::default(),
        };
        let pipeline_at = format!("{}: pipeline {}", p.file.display(), p.name);
        let (source, sink) = tokio::join!(
            tokio::time::timeout(LIMIT, p.source.check(&ctx)),
            tokio::time::timeout(LIMIT, p.sink.check(&ctx))
        );
        for (side, kind, result) in [
            ("source", &p.source_type, source),
            ("sink", &p.sink_type, sink),
        ] {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!("{pipeline_at}: {side} ({kind}): {e}")),
                Err(_) => problems.push(format!(
                    "{pipeline_at}: {side} ({kind}): no answer within {}s",
                    LIMIT.as_secs()
                )),
            }
        }
    }
    problems
}
