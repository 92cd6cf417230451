//! Where each key and value of a YAML document is written, by key path.
//!
//! serde_yaml reports the location of a syntax error only, and a value
//! deserialized through it has no positions left. So the document is scanned
//! once more with yaml-rust2's event parser, which marks every node, and the
//! marks are indexed by the same key paths the deserializer reports
//! (`sink.columns[2]`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
}

impl Loc {
    pub const START: Loc = Loc { line: 1, column: 1 };
}

#[derive(Debug, Clone, Copy)]
struct Node {
    key: Loc,
    value: Loc,
}

/// Key path → where its key and its value are written.
#[derive(Debug, Default)]
pub struct Marks(HashMap<String, Node>, Vec<(String, Loc)>);

impl Marks {
    /// Indexes a document. A document yaml-rust2 cannot parse gives an empty
    /// index (every location then falls back to the start of the file).
    pub fn index(text: &str) -> Marks {
        let mut b = Builder::default();
        if Parser::new_from_str(text).load(&mut b, false).is_err() {
            return Marks::default();
        }
        Marks(b.marks, b.duplicates)
    }

    /// Keys written twice in one mapping: each second (third…) occurrence,
    /// with where it is written.
    pub fn duplicates(&self) -> &[(String, Loc)] {
        &self.1
    }

    /// Where the value at `path` is written (or the nearest written parent).
    pub fn value(&self, path: &str) -> Loc {
        self.nearest(path).map_or(Loc::START, |n| n.value)
    }

    /// Where the key of `path` is written (or the nearest written parent).
    pub fn key(&self, path: &str) -> Loc {
        self.nearest(path).map_or(Loc::START, |n| n.key)
    }

    fn nearest(&self, path: &str) -> Option<&Node> {
        let mut p = path;
        loop {
            if let Some(n) = self.0.get(p) {
                return Some(n);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, Loc)>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    marks: HashMap<String, Node>,
    duplicates: Vec<(String, Loc)>,
}

fn loc(m: Marker) -> Loc {
    // yaml-rust2's lines are 1-based but its columns 0-based (seen in 0.13).
    Loc {
        line: m.line(),
        column: m.col() + 1,
    }
}

impl Builder {
    /// Records a value that starts at `at` and returns its path.
    fn value(&mut self, at: Loc) -> String {
        let in_map = matches!(self.stack.last(), Some(Frame::Map { .. }));
        let (path, key) = match self.stack.last_mut() {
            // The file itself: point at its start, not where its first key is.
            None => (String::new(), Loc::START),
            Some(Frame::Map { path, key }) => match key.take() {
                Some((k, key_at)) if path.is_empty() => (k, key_at),
                Some((k, key_at)) => (format!("{path}.{k}"), key_at),
                None => (format!("{path}.?"), at), // a complex key: not addressable
            },
            Some(Frame::Seq { path, next }) => {
                *next += 1;
                (format!("{path}[{}]", *next - 1), at)
            }
        };
        if !self.marks.contains_key(&path) {
            self.marks.insert(path.clone(), Node { key, value: at });
        } else if in_map && !path.ends_with(".?") && !self.inside_duplicate(&path) {
            self.duplicates.push((path.clone(), key));
        }
        path
    }
}

impl Builder {
    /// Whether `path` lies inside a value already reported as a duplicate
    /// (its keys repeat the first one's: one report is enough).
    fn inside_duplicate(&self, path: &str) -> bool {
        self.duplicates.iter().any(|(d, _)| {
            path.strip_prefix(d.as_str())
                .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = loc(mark);
        match ev {
            Event::MappingStart(..) => {
                let path = self.value(at);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value(at);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Scalar(s, ..) => {
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = self.stack.last_mut()
                {
                    *key = Some((s, at));
                } else {
                    self.value(at);
                }
            }
            Event::Alias(..) => {
                self.value(at);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keys_and_values() {
        let text =
            "name: x\nsource:\n  type: file\n  path: /a\nsink:\n  columns:\n    - a\n    - b\n";
        let m = Marks::index(text);
        assert_eq!(m.key("name"), Loc { line: 1, column: 1 });
        assert_eq!(m.value("name"), Loc { line: 1, column: 7 });
        assert_eq!(m.key("source.path"), Loc { line: 4, column: 3 });
        assert_eq!(m.value("sink.columns[1]"), Loc { line: 8, column: 7 });
        // Unknown paths fall back to the nearest parent.
        assert_eq!(m.key("source.nope"), Loc { line: 2, column: 1 });
        assert_eq!(m.key(""), Loc::START);
        assert!(m.duplicates().is_empty());
    }

    #[test]
    fn every_duplicate_key_is_found_where_it_is_written() {
        let m = Marks::index("name: a\nsink:\n  path: x\n  path: y\nname: b\nsink:\n  path: z\n");
        assert_eq!(
            m.duplicates(),
            [
                ("sink.path".to_string(), Loc { line: 4, column: 3 }),
                ("name".to_string(), Loc { line: 5, column: 1 }),
                ("sink".to_string(), Loc { line: 6, column: 1 })
            ]
        );
    }
}
