//! Values in COPY's text format.

use ferry_api::Value;

/// One value in COPY's text format.
pub(crate) fn encode(v: &Value, json: bool, out: &mut Vec<u8>) {
    use std::io::Write;
    match v {
        Value::Null => out.extend_from_slice(b"\\N"),
        // A json column takes any value as JSON text (a string quoted).
        other if json => escape(other.to_string().as_bytes(), out),
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
        // Written in place rather than through a String per number.
        Value::Number(n) => write!(out, "{n}").expect("writing to a Vec"),
        Value::String(s) => escape(s.as_bytes(), out),
        other => escape(other.to_string().as_bytes(), out),
    }
}

/// Escapes COPY's special bytes, copying the runs between them whole.
fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(replacement);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn copy_text_encoding() {
        let mut out = Vec::new();
        for v in [
            json!(null),
            json!(true),
            json!(1.5),
            json!("a\tb\\c\nd"),
            json!({"k": [1]}),
        ] {
            encode(&v, false, &mut out);
            out.push(b'|');
        }
        for v in [json!("s"), json!(null)] {
            encode(&v, true, &mut out);
            out.push(b'|');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\\N|t|1.5|a\\tb\\\\c\\nd|{\"k\":[1]}|\"s\"|\\N|"
        );
    }
}
