//! Hot reload: what a new reading of the pipeline files changes in a run.
//!
//! A reload reads every file again and compares each with what runs
//! ([`plan`], pure, so it is tested without processes): a new file adds a
//! pipeline, a file whose parsed content differs changes its pipeline (the
//! old one is drained, then the new one starts from the committed
//! positions), a file gone removes its pipeline (its offsets stay), an
//! invalid file leaves its pipeline running on the old definition. A file
//! saved without a change, and every other pipeline, are left alone.
//! `run.rs` applies the plan; `watch.rs` turns file events into reloads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ferry_api::Value;

use crate::config::{ConfigErrors, PipelineConfig};

pub mod watch;

/// A pipeline that runs now, as a reload sees it.
pub(crate) struct Running<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    pub definition: &'a Value,
}

/// One pipeline file as a reload read it.
pub(crate) struct Found {
    pub file: PathBuf,
    pub result: Result<PipelineConfig, ConfigErrors>,
}

/// What a reload does about one file or pipeline.
#[derive(Debug)]
pub(crate) enum Change {
    /// A pipeline that did not run: start it.
    Added(PipelineConfig),
    /// A running pipeline with a new definition: drain the old, start this.
    Changed(PipelineConfig),
    /// Drain and stop this pipeline; its offsets stay.
    Removed { name: String, why: &'static str },
    /// The file is invalid; the pipeline it had (if any) runs on.
    Invalid {
        file: PathBuf,
        running: Option<String>,
        errors: ConfigErrors,
    },
    /// The file is valid but names a pipeline another file defines.
    Collides {
        file: PathBuf,
        name: String,
        other: PathBuf,
    },
    /// The file is as the pipeline runs it (a save without a change, or a
    /// change undone).
    Unchanged { name: String },
}

/// The names that stay with a file, which another file cannot take: the
/// file that runs the pipeline, when it still defines it or is invalid (its
/// pipeline goes on); else a file that defines it exactly as it runs (the
/// running file was renamed).
fn held<'a>(running: &[Running<'a>], found: &[Found]) -> HashMap<&'a str, PathBuf> {
    let mut held = HashMap::new();
    for r in running {
        let stays = found.iter().any(|f| {
            f.file == r.file
                && match &f.result {
                    Ok(p) => p.name == r.name,
                    Err(_) => true,
                }
        });
        let moved = || {
            found.iter().find(|f| {
                f.result
                    .as_ref()
                    .is_ok_and(|p| p.name == r.name && p.definition == *r.definition)
            })
        };
        if stays {
            held.insert(r.name, r.file.to_path_buf());
        } else if let Some(f) = moved() {
            held.insert(r.name, f.file.clone());
        }
    }
    held
}

/// What the files `found` change in what runs. `unreadable`: paths that
/// could not be read this time; the pipelines of files in such a folder
/// are left running rather than removed (a pipeline file given by itself
/// and gone is removed).
pub(crate) fn plan(running: &[Running], found: Vec<Found>, unreadable: &[PathBuf]) -> Vec<Change> {
    let running_by_file: HashMap<&Path, &Running> = running.iter().map(|r| (r.file, r)).collect();
    let held = held(running, &found);
    let mut claimed: HashMap<String, PathBuf> = HashMap::new();
    let mut changes = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for Found { file, result } in found {
        seen.push(file.clone());
        let was = running_by_file.get(file.as_path());
        let p = match result {
            Ok(p) => p,
            Err(errors) => {
                let running = was.map(|r| r.name.to_string());
                changes.push(Change::Invalid {
                    file,
                    running,
                    errors,
                });
                continue;
            }
        };
        if let Some(other) = held.get(p.name.as_str()).filter(|f| **f != file) {
            changes.push(Change::Collides {
                file,
                name: p.name,
                other: other.clone(),
            });
            continue;
        }
        if let Some(other) = claimed.get(&p.name) {
            let other = other.clone();
            changes.push(Change::Collides {
                file,
                name: p.name,
                other,
            });
            continue;
        }
        claimed.insert(p.name.clone(), file.clone());
        match was {
            Some(r) if r.name == p.name && *r.definition == p.definition => {
                changes.push(Change::Unchanged { name: p.name })
            }
            Some(r) if r.name == p.name => changes.push(Change::Changed(p)),
            _ => {
                if running.iter().any(|r| r.name == p.name) {
                    // Its file was removed or renamed in this same change:
                    // the pipeline moves to this file.
                    changes.push(Change::Changed(p));
                } else {
                    changes.push(Change::Added(p));
                }
            }
        }
    }
    let kept = |r: &&Running| {
        claimed.contains_key(r.name)
            || held.contains_key(r.name)
            || unreadable
                .iter()
                .any(|u| r.file.parent() == Some(u.as_path()))
    };
    for r in running.iter().filter(|r| !kept(r)) {
        let why = if seen.iter().any(|f| f == r.file) {
            "its file names another pipeline now"
        } else {
            "its file was removed"
        };
        changes.push(Change::Removed {
            name: r.name.to_string(),
            why,
        });
    }
    changes
}

#[cfg(test)]
mod tests;
