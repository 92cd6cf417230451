//! Turning one parsed file into a pipeline: every section checked, every
//! mistake collected with its place, connector sections handed to their
//! connector.

use super::*;

pub(super) struct Loader<'a> {
    pub(super) file: &'a Path,
    pub(super) marks: Marks,
    pub(super) secrets: Secrets,
    pub(super) errors: Vec<ConfigError>,
    /// Paths whose `${VAR}` is unset.
    pub(super) env_failed: Vec<String>,
    /// Paths whose value is one `${VAR}` that became a number or a
    /// boolean, with the variable's text: where the section wants a string
    /// (a password of digits, a database named `5`), the text is put back.
    pub(super) typed_env: Vec<(String, String)>,
}

pub(super) enum At {
    Key,
    Value,
}

impl Loader<'_> {
    pub(super) fn error(&mut self, path: &str, at: At, message: impl Into<String>) {
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
    pub(super) fn json_value(
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

    pub(super) fn substitute(
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
                let typed = match serde_yaml::from_str::<serde_yaml::Value>(&out) {
                    Ok(serde_yaml::Value::Bool(b)) => Value::Bool(b),
                    Ok(serde_yaml::Value::Number(n)) => {
                        serde_json::to_value(&n).unwrap_or(Value::String(out.clone()))
                    }
                    _ => return Value::String(out),
                };
                self.typed_env.push((path.to_string(), out));
                typed
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

    pub(super) fn pipeline(&mut self, value: Value, registry: &Registry) -> Option<PipelineConfig> {
        let Value::Object(mut top) = value else {
            self.error(
                "",
                At::Value,
                "a pipeline file must be a mapping with the keys name, source and sink",
            );
            return None;
        };
        self.top_keys(&top);
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
        let transforms = top.remove("transforms");
        let chain = match &transforms {
            Some(v) => self.transforms(v),
            None => Some(Default::default()),
        };
        if let (Some(steps), Some((sink_type, sink))) = (&transforms, &sink) {
            self.routes_fit_the_sink(steps, sink_type, sink.as_ref());
        }
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
            transforms: chain?,
            definition: Value::Null,
        };
        for (key, message) in local_files::own_problems(&pipeline) {
            self.error(&key, At::Value, message);
        }
        Some(pipeline)
    }

    /// The sink takes routed records, and every destination a `route` step
    /// names (in its `map` and its `default`) is one it could write to.
    fn routes_fit_the_sink(
        &mut self,
        steps: &Value,
        sink_type: &str,
        sink: &dyn ferry_api::SinkConfig,
    ) {
        let Value::Array(items) = steps else { return };
        for (i, item) in items.iter().enumerate() {
            if item.get("type").and_then(Value::as_str) != Some("route") {
                continue;
            }
            if !sink.takes_destinations() {
                let message = format!(
                    "a route step, but sink `{sink_type}` writes to one destination only (the postgres, mongodb, kafka and elasticsearch sinks take routed records)"
                );
                self.error(&format!("transforms[{i}]"), At::Value, message);
                return;
            }
            let mut names: Vec<(String, &str)> = Vec::new();
            if let Some(Value::Object(map)) = item.get("map") {
                for (k, v) in map {
                    if let Some(name) = v.as_str() {
                        names.push((format!("transforms[{i}].map.{k}"), name));
                    }
                }
            }
            if let Some(Value::String(name)) = item.get("default") {
                names.push((format!("transforms[{i}].default"), name));
            }
            for (key, name) in names {
                if let Some(message) = (!name.is_empty())
                    .then(|| sink.destination_problem(name))
                    .flatten()
                {
                    self.error(&key, At::Value, message);
                }
            }
        }
    }

    /// `transforms:`: each step parsed and checked on its own, so that
    /// every problem of every step is reported at its place.
    fn transforms(&mut self, v: &Value) -> Option<std::sync::Arc<crate::transform::Chain>> {
        let Value::Array(items) = v else {
            self.error(
                "transforms",
                At::Value,
                "must be a list of steps (- type: rename, …)",
            );
            return None;
        };
        let mut configs = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let step = self.section(
                item,
                &format!("transforms[{i}]"),
                ferry_api::deserialize::<crate::transform::TransformConfig>,
                |c| {
                    crate::transform::problems_of(c)
                        .into_iter()
                        .map(|p| (p, At::Value))
                        .collect()
                },
            );
            configs.push(step);
        }
        let configs: Vec<_> = configs.into_iter().collect::<Option<_>>()?;
        let chain = crate::transform::Chain::compile(&configs).expect("every step was checked");
        Some(std::sync::Arc::new(chain))
    }

    /// Every top-level key is known, and the needed ones are there.
    fn top_keys(&mut self, top: &serde_json::Map<String, Value>) {
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
    }

    pub(super) fn name(&mut self, v: Value) -> Option<String> {
        match v {
            Value::String(s) if is_pipeline_name(&s) => Some(s),
            _ => {
                self.error("name", At::Value, "must be a string of letters, digits, '-', '_' and '.' (at most 100, not starting with '.')");
                None
            }
        }
    }

    /// A `source:` or `sink:` section: find the connector by `type`, parse the
    /// rest with it, then run its checks.
    pub(super) fn connector<C: ?Sized>(
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
        let check = |c: &C| validate(c).into_iter().map(|p| (p, At::Value)).collect();
        let config = self.section(&Value::Object(map), section, parse, |c| check(c))?;
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
    pub(super) fn section<T>(
        &mut self,
        v: &Value,
        section: &str,
        parse: impl Fn(&Value) -> Result<T, FieldError>,
        check: impl Fn(&T) -> Vec<(ConfigProblem, At)>,
    ) -> Option<T> {
        let mut retry = Retry {
            value: v.clone(),
            removed: Vec::new(),
            stand_ins: Vec::new(),
            failed: false,
        };
        for _ in 0..200 {
            match parse(&retry.value) {
                Ok(t) => {
                    let mut clean = !retry.failed;
                    for (p, at) in check(&t) {
                        if retry.stepped_over(&p.path) {
                            continue;
                        }
                        clean = false;
                        self.error(&join(section, &path_string(&p.path)), at, p.message);
                    }
                    return clean.then_some(t);
                }
                Err(err) if self.retype(section, &err, &mut retry.value) => {}
                Err(err) => {
                    retry.failed = true;
                    self.step_over(section, err, &mut retry)?;
                }
            }
        }
        None
    }

    /// Puts back the text of the `${VAR}`s that were typed as numbers or
    /// booleans at or under the place of `err` (where strings go; an
    /// untagged enum reports its own place, not the value's): not a
    /// mistake of the file. False when there were none.
    fn retype(&mut self, section: &str, err: &FieldError, value: &mut Value) -> bool {
        let at = join(section, &path_string(&err.path));
        let below = |p: &str| {
            p.strip_prefix(at.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        let (retyped, kept) = std::mem::take(&mut self.typed_env)
            .into_iter()
            .partition::<Vec<_>, _>(|(p, _)| below(p));
        self.typed_env = kept;
        let mut any = false;
        for (path, text) in retyped {
            if let Some(segments) = segments_of(value, section, &path) {
                any |= insert_at(value, &segments, Value::String(text));
            }
        }
        any
    }

    /// Reports `err` and changes the section so that the next parse gets
    /// past it; None when it cannot be stepped over.
    fn step_over(&mut self, section: &str, err: FieldError, retry: &mut Retry) -> Option<()> {
        if let Some(slot) = retry
            .stand_ins
            .iter_mut()
            .find(|(p, _)| err.path.starts_with(p))
        {
            // The stand-in has the wrong type (or shape): try the next.
            slot.1 += 1;
            return insert_at(&mut retry.value, &slot.0, stand_in(slot.1)?).then_some(());
        }

        match err.misfit() {
            Misfit::UnknownKey { key, expected } => {
                let mut path = err.path.clone();
                if path.last() != Some(&PathSegment::Key(key.clone())) {
                    path.push(PathSegment::Key(key.clone()));
                }
                let expected = expected
                    .map(|e| format!(", expected {e}"))
                    .unwrap_or_default();
                let at = join(section, &path_string(&path));
                self.error(&at, At::Key, format!("unknown key `{key}`{expected}"));
                retry.remove(path)
            }
            Misfit::MissingKey { key } => {
                let mut path = err.path.clone();
                path.push(PathSegment::Key(key.clone()));
                // A key we removed after reporting it is missing now: said already.
                if !retry.removed.contains(&path) {
                    let at = join(section, &path_string(&path));
                    self.error(&at, At::Key, format!("missing key `{key}`"));
                }
                let first = stand_in(0).expect("one kind at least");
                if !insert_at(&mut retry.value, &path, first) {
                    return None;
                }
                retry.stand_ins.push((path, 0));
                Some(())
            }
            Misfit::Other => {
                let at = join(section, &path_string(&err.path));
                let message = match value_at(&retry.value, &err.path) {
                    // serde_json's words for a number that does not fit the
                    // key's type (numbers are kept as exact text).
                    Some(Value::Number(n)) if err.message == "invalid number" => format!(
                        "invalid value: number {n}, expected a whole number in the range this key takes"
                    ),
                    _ => err.message.clone(),
                };
                self.error(&at, At::Value, message);
                if matches!(err.path.last(), None | Some(PathSegment::Index(_))) {
                    return None;
                }
                retry.remove(err.path)
            }
        }
    }
}

/// A section parsed again and again, each time past one more mistake.
struct Retry {
    value: Value,
    /// Keys removed after their error was reported.
    removed: Vec<Vec<PathSegment>>,
    /// Missing keys given a stand-in value, so the parse goes on to the
    /// next missing key (serde stops at the first), with the index of the
    /// kind of value tried: one of the right type is kept.
    stand_ins: Vec<(Vec<PathSegment>, usize)>,
    /// Some parse failed: the section is not clean, whatever parses last.
    failed: bool,
}

impl Retry {
    fn remove(&mut self, path: Vec<PathSegment>) -> Option<()> {
        if !remove_at(&mut self.value, &path) {
            return None;
        }
        self.removed.push(path);
        Some(())
    }

    /// Whether a problem at `path` is at a key removed or stood in for
    /// (reported already).
    fn stepped_over(&self, path: &[PathSegment]) -> bool {
        self.removed
            .iter()
            .chain(self.stand_ins.iter().map(|(p, _)| p))
            .any(|s| path.starts_with(s))
    }
}

/// `delivery:` checks beyond its types.
pub(super) fn delivery_problems(d: &DeliveryConfig) -> Vec<(ConfigProblem, At)> {
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
pub(super) fn errors_problems(e: &ErrorsConfig) -> Vec<(ConfigProblem, At)> {
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

pub(super) fn is_single_reference(s: &str) -> bool {
    s.starts_with("${") && s.ends_with('}') && s[2..].find('}') == Some(s.len() - 3)
}

pub(super) fn value_at<'v>(value: &'v Value, path: &[PathSegment]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        PathSegment::Key(k) => v.get(k),
        PathSegment::Index(i) => v.get(i),
    })
}

/// The kinds of value a missing key is given in turn, to parse on.
pub(super) fn stand_in(kind: usize) -> Option<Value> {
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
pub(super) fn insert_at(value: &mut Value, path: &[PathSegment], new: Value) -> bool {
    match parent_object(value, path) {
        Some((map, key)) => {
            map.insert(key.clone(), new);
            true
        }
        None => false,
    }
}

pub(super) fn remove_at(value: &mut Value, path: &[PathSegment]) -> bool {
    parent_object(value, path).is_some_and(|(map, key)| map.remove(key).is_some())
}

/// The object holding the last key of `path`, and that key.
pub(super) fn parent_object<'v, 'p>(
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

/// The place in `value` (the section at `section`) whose path reads `path`.
fn segments_of(value: &Value, section: &str, path: &str) -> Option<Vec<PathSegment>> {
    fn walk(v: &Value, at: &mut Vec<PathSegment>, section: &str, path: &str) -> bool {
        if join(section, &path_string(at)) == path {
            return true;
        }
        let children: Vec<(PathSegment, &Value)> = match v {
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| (PathSegment::Key(k.clone()), v))
                .collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (PathSegment::Index(i), v))
                .collect(),
            _ => return false,
        };
        for (segment, child) in children {
            at.push(segment);
            if walk(child, at, section, path) {
                return true;
            }
            at.pop();
        }
        false
    }
    let mut at = Vec::new();
    walk(value, &mut at, section, path).then_some(at)
}

pub(super) fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}
