//! Connection URLs in messages and logs.

/// A connection URL without its passwords, for messages and logs:
/// `scheme://user:secret@host/…?password=secret` →
/// `scheme://user:***@host/…?password=***`. The user part ends at the last
/// `@` before the query (a password may hold a `/`, unencoded).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let (head, query) = match url.find(['?', '#']) {
        Some(q) if q >= scheme_end => url.split_at(q),
        _ => (url, ""),
    };
    let rest = &head[scheme_end..];
    let mut out = match rest.rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &head[..scheme_end], &rest[at..]),
            None => head.to_string(),
        },
        None => head.to_string(),
    };
    // Query parameters that carry secrets (libpq's `password`, `sslpassword`).
    for part in query.split_inclusive(['&', '#']) {
        let (param, sep) = match part.strip_suffix(['&', '#']) {
            Some(p) => (p, &part[p.len()..]),
            None => (part, ""),
        };
        let name = param
            .trim_start_matches('?')
            .split('=')
            .next()
            .unwrap_or("");
        if param.contains('=') && name.to_ascii_lowercase().ends_with("password") {
            let keep = &param[..param.find('=').expect("checked") + 1];
            out.push_str(keep);
            out.push_str("***");
            out.push_str(sep);
        } else {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("mongodb://app:s3cret@db.example:27017/?tls=true"),
            "mongodb://app:***@db.example:27017/?tls=true"
        );
        assert_eq!(
            redact_url("https://elastic:s3cret@es.example:9200/"),
            "https://elastic:***@es.example:9200/"
        );
        assert_eq!(
            redact_url("postgres://root@127.0.0.1/test"),
            "postgres://root@127.0.0.1/test"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:19200"),
            "http://127.0.0.1:19200"
        );
        assert_eq!(
            redact_url("postgres://root:lit/pw2@127.0.0.1:5432/test"),
            "postgres://root:***@127.0.0.1:5432/test"
        );
        assert_eq!(
            redact_url("postgres://root@h/test?sslmode=off&password=literalpw1&x=1"),
            "postgres://root@h/test?sslmode=off&password=***&x=1"
        );
        assert_eq!(
            redact_url("postgres://root@h/test?password=a"),
            "postgres://root@h/test?password=***"
        );
    }
}
