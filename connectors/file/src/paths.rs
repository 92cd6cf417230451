//! Which files a source's path or glob names.
//!
//! The `glob` crate matches names as `&str` and silently passes over any
//! name that is not UTF-8 (`f\xfe.jsonl` never matches `*.jsonl`), so a
//! file could sit beside the others and never be read. This walk matches
//! each name's lossy text instead (an invalid byte becomes U+FFFD, which `*`
//! and `?` match), and the files are opened by their real names.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use glob::{MatchOptions, Pattern};

/// Folders below the literal root searched by a pattern with `**`.
const MAX_DEPTH: usize = 32;

/// A source's path or glob, split into the folder it starts from and the
/// pattern of what lies below it.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    root: PathBuf,
    rest: Pattern,
    /// How many folders down from `root` files can match.
    depth: usize,
}

impl Glob {
    pub(crate) fn new(pattern: &str) -> Result<Glob, glob::PatternError> {
        let (root, rest) = split_root(pattern);
        let depth = if rest.contains("**") {
            MAX_DEPTH
        } else {
            rest.split('/').count()
        };
        Ok(Glob {
            root,
            rest: Pattern::new(&rest)?,
            depth,
        })
    }

    /// Every path below the root that the pattern matches, in name order
    /// within each folder (as the glob crate yields them). Folders that
    /// cannot be read are skipped with a warning; files are not stat'ed.
    pub(crate) fn matches(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        self.walk(&self.root, "", 1, &mut found);
        found
    }

    fn walk(&self, dir: &Path, rel: &str, depth: usize, found: &mut Vec<PathBuf>) {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list a folder the source's glob covers");
                return;
            }
        };
        let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        names.sort();
        let options = MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        for name in names {
            let text = name.to_string_lossy();
            let child_rel = if rel.is_empty() {
                text.into_owned()
            } else {
                format!("{rel}/{text}")
            };
            let path = dir.join(&name);
            if self.rest.matches_with(&child_rel, options) {
                found.push(path.clone());
            }
            // Folders are followed only as deep as the pattern reaches; with
            // `**`, symbolic links to folders are not followed (no loops).
            if depth < self.depth {
                let is_dir = if self.depth == MAX_DEPTH {
                    fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir())
                } else {
                    path.is_dir()
                };
                if is_dir {
                    self.walk(&path, &child_rel, depth + 1, found);
                }
            }
        }
    }
}

/// The literal folder a pattern starts from, and the pattern below it.
fn split_root(pattern: &str) -> (PathBuf, String) {
    let parts: Vec<Component> = Path::new(pattern).components().collect();
    let literal = parts
        .iter()
        .take(parts.len().saturating_sub(1))
        .take_while(|c| !is_wild(c))
        .count();
    let mut root = PathBuf::new();
    for c in &parts[..literal] {
        root.push(c);
    }
    let rest: Vec<String> = parts[literal..]
        .iter()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    (non_empty(root), rest.join("/"))
}

fn is_wild(c: &Component) -> bool {
    c.as_os_str()
        .to_string_lossy()
        .contains(['*', '?', '[', '{'])
}

/// The folder to watch for a path or glob, and whether to watch below it.
pub(crate) fn watch_root(pattern: &str) -> (PathBuf, bool) {
    let (root, rest) = split_root(pattern);
    (root, rest.contains('/'))
}

fn non_empty(p: PathBuf) -> PathBuf {
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn watch_roots() {
        assert_eq!(watch_root("/a/b/*.jsonl"), (PathBuf::from("/a/b"), false));
        assert_eq!(watch_root("/a/*/x.jsonl"), (PathBuf::from("/a"), true));
        assert_eq!(watch_root("x.jsonl"), (PathBuf::from("."), false));
        assert_eq!(watch_root("in/x.jsonl"), (PathBuf::from("in"), false));
    }

    #[test]
    fn names_that_are_not_utf8_match_too() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"f\xfe.jsonl"));
        fs::write(&odd, "{}\n").unwrap();
        fs::write(dir.path().join("a.jsonl"), "{}\n").unwrap();
        fs::write(dir.path().join("a.txt"), "{}\n").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b.jsonl"), "{}\n").unwrap();

        let flat = Glob::new(&format!("{}/*.jsonl", dir.path().display())).unwrap();
        assert_eq!(flat.matches(), [dir.path().join("a.jsonl"), odd.clone()]);
        let deep = Glob::new(&format!("{}/**/*.jsonl", dir.path().display())).unwrap();
        assert_eq!(
            deep.matches(),
            [
                dir.path().join("a.jsonl"),
                odd.clone(),
                dir.path().join("sub/b.jsonl")
            ]
        );
        let one = Glob::new(&format!("{}/sub/b.jsonl", dir.path().display())).unwrap();
        assert_eq!(one.matches(), [dir.path().join("sub/b.jsonl")]);
    }
}
