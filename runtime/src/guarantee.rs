//! What `ferry validate` says of each pipeline's delivery guarantee.

use ferry_api::Delivery;

use crate::config::PipelineConfig;

/// Whether a pipeline is exactly-once, and why, in words for humans.
pub fn delivery_guarantee(p: &PipelineConfig) -> String {
    if !p.source.replayable() {
        return format!(
            "at-least-once: the {} source cannot replay from a position",
            p.source_type
        );
    }
    let guarantee = match p.sink.delivery() {
        Delivery::Transactional => format!(
            "exactly-once: the {} sink commits the source positions together with the data",
            p.sink_type
        ),
        Delivery::Idempotent => format!(
            "exactly-once in effect: the {} sink writes with ids, so a replay overwrites",
            p.sink_type
        ),
        Delivery::AtLeastOnce => {
            return format!(
                "at-least-once: after a crash the {} sink may receive again what it got since the last commit",
                p.sink_type
            );
        }
    };
    let caveats: Vec<&str> = [p.source.delivery_caveat(), p.sink.delivery_caveat()]
        .into_iter()
        .flatten()
        .collect();
    if caveats.is_empty() {
        guarantee
    } else {
        format!("{guarantee}; but {}", caveats.join("; and "))
    }
}
