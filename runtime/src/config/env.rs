//! `${NAME}` substitution from the environment, with the values remembered so
//! that no message ever shows them.

/// Values taken from the environment while loading one file.
#[derive(Debug, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The values taken from the environment.
    pub fn values(&self) -> &[String] {
        &self.0
    }

    /// Replaces every environment value in `message` with `${NAME}`-free
    /// asterisks: error messages may quote a bad value, which may be a secret.
    pub fn redact(&self, message: &str) -> String {
        let mut out = message.to_string();
        // Longest first: a value inside another (`5` in `12345`) must not
        // cut the longer one apart before it is replaced.
        // Masked as in the log (`crate::redact`): not numbers or very short values.
        let mut values: Vec<&String> = self
            .0
            .iter()
            .filter(|v| crate::redact::is_masked(v))
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for v in values {
            out = out.replace(v.as_str(), "***");
        }
        out
    }
}

/// Substitutes `${NAME}` and `${NAME:-default}` in `s`. `$${` stands for a
/// literal `${`. Returns the new string, or the names of unset variables.
pub fn substitute(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    secrets: &mut Secrets,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{')
            && let Some(end) = body.find('}')
        {
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match (lookup(name), default) {
                (Some(v), _) => {
                    out.push_str(&v);
                    secrets.0.push(v);
                }
                (None, Some(d)) => out.push_str(d),
                (None, None) => missing.push(name.to_string()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PW").then(|| "hunter2".to_string())
    }

    #[test]
    fn substitutes_defaults_escapes_and_reports_unset() {
        let mut s = Secrets::default();
        assert_eq!(
            substitute("a ${PW} b", &env, &mut s).unwrap(),
            "a hunter2 b"
        );
        assert_eq!(substitute("${NOPE:-x}", &env, &mut s).unwrap(), "x");
        assert_eq!(substitute("$${PW} $5", &env, &mut s).unwrap(), "${PW} $5");
        assert_eq!(
            substitute("${A}${B}", &env, &mut s).unwrap_err(),
            ["A", "B"]
        );
        assert_eq!(s.redact("bad value \"hunter2\""), "bad value \"***\"");
    }
}
