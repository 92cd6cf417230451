//! The one place secrets are taken out of what ferry prints.
//!
//! Every value a pipeline file takes from the environment (`${PW}`) is
//! registered here when the file is loaded; every log line (through
//! [`RedactingStderr`], the log writer), every message `main` prints, and
//! the panic message pass through [`redact`], which replaces each registered
//! value with `***`. So a connector's error that quotes a URL, a table name
//! or a server's answer cannot leak a password, whoever wrote it.
//!
//! Numbers and `true`/`false` are not registered: they are knobs
//! (`batch_size: ${BATCH}`), and masking every `1000` in the logs would hide
//! more than it protects. Nor are values shorter than [`MIN_LEN`].

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::RwLock;

/// Shorter environment values are not masked (a `-` or `db` would mask
/// half of every line).
pub const MIN_LEN: usize = 3;

// A std lock: held only to read or extend a short list, never across an
// await, and read by every log line (many readers, almost no writers).
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers `value` as a secret, with its URL-encoded and decoded forms
/// (a password appears encoded in a URL, and decoded in some errors).
pub fn register(value: &str) {
    if !is_masked(value) {
        return;
    }
    let mut forms = vec![value.to_string(), percent_encode(value)];
    if let Some(decoded) = percent_decode(value) {
        forms.push(decoded);
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for f in forms {
        if f.len() >= MIN_LEN && !secrets.contains(&f) {
            secrets.push(f);
        }
    }
    // Longest first: a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret replaced by `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    Cow::Owned(out)
}

/// Whether `value`, from the environment, is masked where it appears.
pub(crate) fn is_masked(value: &str) -> bool {
    value.len() >= MIN_LEN && !is_knob(value)
}

fn is_knob(value: &str) -> bool {
    matches!(value, "true" | "false") || value.parse::<f64>().is_ok()
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(value: &str) -> Option<String> {
    if !value.contains('%') {
        return None;
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The log writer: standard error, with secrets masked. tracing's fmt
/// layer formats an event whole, then writes it in one `write_all`, so a
/// secret never straddles two writes.
pub struct RedactingStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> RedactingStderr {
        RedactingStderr
    }
}

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_in_every_form() {
        register("s3cr3t/pa ss");
        register("1000");
        register("ab");
        assert_eq!(
            redact("postgres://u:s3cr3t%2Fpa%20ss@h/db failed: s3cr3t/pa ss"),
            "postgres://u:***@h/db failed: ***"
        );
        assert_eq!(redact("batch of 1000 (ab)"), "batch of 1000 (ab)");
    }
}
