//! Local files that pipelines read and write, checked against each other
//! without I/O: a pipeline must not read its own output or dead letters
//! (it would read them back forever, or cut its dead letters away as
//! uncommitted output), and two pipelines must not write one file.
//!
//! Paths are compared lexically, made absolute against the working folder
//! (no symbolic links are resolved: that would be I/O). What this cannot
//! see — a link, a second ferry process — the file sink's lock on its
//! output catches at run time.

use std::path::{Component, Path, PathBuf};

use glob::{MatchOptions, Pattern};

use super::PipelineConfig;

/// A file a pipeline writes, with the config key that names it.
pub(crate) struct Written {
    pub key: String,
    pub path: PathBuf,
}

/// Every local file `p` writes: its sink's files, and its dead-letter file
/// when one is configured.
pub(crate) fn written(p: &PipelineConfig) -> Vec<Written> {
    let mut out: Vec<Written> = p
        .sink
        .local_outputs()
        .into_iter()
        .map(|(key, path)| Written {
            key: format!("sink.{key}"),
            path: normalize(&path),
        })
        .collect();
    if let Some(dl) = &p.errors.dead_letter {
        out.push(Written {
            key: "errors.dead_letter".into(),
            path: normalize(dl),
        });
    }
    out
}

/// A problem of one pipeline: `(key to point at, message)`.
pub(crate) fn own_problems(p: &PipelineConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let writes = written(p);
    for w in &writes {
        for (key, glob) in p.source.local_inputs() {
            if matches(&glob, &w.path) {
                problems.push((
                    w.key.clone(),
                    format!(
                        "writes {}, which source.{key} ({glob}) reads: the pipeline would read \
                         its own output back as input, forever",
                        w.path.display()
                    ),
                ));
            }
        }
    }
    if let Some(dl) = writes.iter().find(|w| w.key == "errors.dead_letter")
        && let Some(out) = writes.iter().find(|w| w.key != dl.key && w.path == dl.path)
    {
        problems.push((
            dl.key.clone(),
            format!(
                "is the same file as {} ({}): dead letters and output must be separate files",
                out.key,
                out.path.display()
            ),
        ));
    }
    // One message per key is enough (the output and its manifest both match).
    problems.dedup_by(|a, b| a.0 == b.0);
    problems
}

/// What `ferry run` checks once the data folder is known: the default
/// dead-letter files (`<data-dir>/dlq/<name>.jsonl`) against every
/// pipeline's source and outputs. One line per problem.
pub fn run_conflicts(pipelines: &[PipelineConfig], data_dir: &Path) -> Vec<String> {
    let all: Vec<(&PipelineConfig, Vec<Written>)> = pipelines
        .iter()
        .map(|p| (p, written_in(p, data_dir)))
        .collect();
    let mut problems = Vec::new();
    for (i, (p, files)) in all.iter().enumerate() {
        problems.extend(reads_its_default_dead_letters(p, files));
        for (other, theirs) in &all[i + 1..] {
            problems.extend(
                both_write(files, theirs)
                    .filter(|(w, o)| is_default(w) || is_default(o))
                    .map(|(w, o)| both_write_words(p, w, other, o)),
            );
        }
    }
    problems
}

/// What a reload checks before it starts `p` beside the `others` that go on
/// running: that no two of them write one file, default dead-letter files
/// included. One line per problem.
pub fn reload_conflicts(
    p: &PipelineConfig,
    others: &[&PipelineConfig],
    data_dir: &Path,
) -> Vec<String> {
    let files = written_in(p, data_dir);
    let mut problems: Vec<String> = reads_its_default_dead_letters(p, &files).collect();
    for other in others {
        let theirs = written_in(other, data_dir);
        if let Some((w, o)) = both_write(&files, &theirs).next() {
            problems.push(both_write_words(p, w, other, o));
        }
    }
    problems
}

/// Every local file `p` writes when run with `data_dir`: [`written`] and
/// its default dead-letter file.
fn written_in(p: &PipelineConfig, data_dir: &Path) -> Vec<Written> {
    let mut w = written(p);
    if p.errors.dead_letter.is_none() {
        w.push(Written {
            key: "its default dead-letter file".into(),
            path: normalize(&p.dead_letter_path(data_dir)),
        });
    }
    w
}

fn is_default(w: &Written) -> bool {
    w.key.starts_with("its default")
}

/// `p`'s source reading its own default dead-letter file.
fn reads_its_default_dead_letters<'a>(
    p: &'a PipelineConfig,
    files: &'a [Written],
) -> impl Iterator<Item = String> + 'a {
    files.iter().filter(|w| is_default(w)).flat_map(move |w| {
        p.source
            .local_inputs()
            .into_iter()
            .filter(|(_, glob)| matches(glob, &w.path))
            .map(move |(key, glob)| {
                format!(
                    "{}: pipeline {}: source.{key} ({glob}) reads {}, {}: set \
                     errors.dead_letter elsewhere or narrow the source's path",
                    p.file.display(),
                    p.name,
                    w.path.display(),
                    w.key
                )
            })
    })
}

/// The files written in both lists, as (the first's, the second's).
fn both_write<'a>(
    files: &'a [Written],
    theirs: &'a [Written],
) -> impl Iterator<Item = (&'a Written, &'a Written)> + 'a {
    files
        .iter()
        .filter_map(move |w| theirs.iter().find(|o| o.path == w.path).map(|o| (w, o)))
}

fn both_write_words(
    p: &PipelineConfig,
    w: &Written,
    other: &PipelineConfig,
    o: &Written,
) -> String {
    format!(
        "{}: pipeline {} writes {} ({}), which pipeline {} ({}) writes too ({}): \
         two writers of one file would corrupt it",
        p.file.display(),
        p.name,
        w.path.display(),
        w.key,
        other.name,
        other.file.display(),
        o.key
    )
}

/// Whether a source glob (or plain path) covers `path`.
fn matches(glob: &str, path: &Path) -> bool {
    // The working folder is a literal prefix: its name may hold `[` or `*`.
    let absolute = if Path::new(glob).is_absolute() {
        normalize(Path::new(glob))
    } else {
        let cwd = std::env::current_dir().unwrap_or_default();
        normalize(&Path::new(&Pattern::escape(&cwd.to_string_lossy())).join(glob))
    };
    let Ok(pattern) = Pattern::new(&absolute.to_string_lossy()) else {
        return false;
    };
    let options = MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    pattern.matches_with(&path.to_string_lossy(), options)
}

/// `path` made absolute against the working folder, with `.` and `..`
/// resolved lexically.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_cover_paths_lexically() {
        let cwd = std::env::current_dir().unwrap();
        assert!(matches("in/*.jsonl", &cwd.join("in/a.jsonl")));
        assert!(matches("./in/../in/*.jsonl", &cwd.join("in/a.jsonl")));
        assert!(matches("/d/**/*.jsonl", Path::new("/d/x/y/a.jsonl")));
        assert!(!matches("/d/*.jsonl", Path::new("/d/x/a.jsonl")));
        assert!(matches("/d/*", Path::new("/d/out.jsonl.ferry-manifest")));
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
