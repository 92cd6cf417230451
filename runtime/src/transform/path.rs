//! Dotted field paths (`customer.address.city`) into a record's JSON
//! object: parsed once at load time, then used on every record.

use std::fmt;

use ferry_api::Value;
use serde_json::Map;

/// The most keys a path has: records nest no deeper than the sources
/// read them (128), and a deeper record costs deep recursion to write.
const MAX_DEPTH: usize = 100;

/// A field path: one or more keys, outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.c`. A key may not be empty (`a..b`, `.a`, `a.`).
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        if text.is_empty() {
            return Err("a field path may not be empty".to_string());
        }
        let keys: Vec<String> = text.split('.').map(str::to_string).collect();
        if keys.iter().any(String::is_empty) {
            return Err(format!(
                "{text:?} is not a field path: keys are separated by single dots (a.b.c)"
            ));
        }
        if keys.len() > MAX_DEPTH {
            return Err(format!(
                "a field path has at most {MAX_DEPTH} keys (this one {})",
                keys.len()
            ));
        }
        if text.contains("${") {
            return Err(format!(
                "{text:?}: `${{NAME}}` is replaced in values, not in field names"
            ));
        }
        Ok(FieldPath(keys))
    }

    /// Whether `self` is `other` or holds it (`a` holds `a.b`).
    pub fn holds(&self, other: &FieldPath) -> bool {
        other.0.starts_with(&self.0)
    }

    /// The value at this path, if every key on the way is there.
    pub fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(value, |v, k| v.as_object()?.get(k))
    }

    /// The value at this path, to change in place (no key moved, hashed
    /// again or copied).
    pub fn get_mut<'a>(&self, value: &'a mut Value) -> Option<&'a mut Value> {
        self.0
            .iter()
            .try_fold(value, |v, k| v.as_object_mut()?.get_mut(k))
    }

    /// Takes the value out, leaving the objects on the way.
    pub fn take(&self, value: &mut Value) -> Option<Value> {
        let (last, parents) = self.0.split_last().expect("never empty");
        let mut v = value;
        for k in parents {
            v = v.as_object_mut()?.get_mut(k)?;
        }
        v.as_object_mut()?.remove(last)
    }

    /// Sets the value, making the objects on the way that are missing; a
    /// key on the way that holds something other than an object is an
    /// error (it would be lost).
    pub fn set(&self, value: &mut Value, new: Value) -> Result<(), String> {
        let (last, parents) = self.0.split_last().expect("never empty");
        let mut v = value;
        for (i, k) in parents.iter().enumerate() {
            let Value::Object(map) = v else {
                return Err(format!(
                    "{} is not an object",
                    self.prefix(i).unwrap_or_else(|| "the record".to_string())
                ));
            };
            v = map
                .entry(k.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
        match v {
            Value::Object(map) => {
                map.insert(last.clone(), new);
                Ok(())
            }
            _ => Err(format!(
                "{} is not an object",
                self.prefix(parents.len())
                    .unwrap_or_else(|| "the record".to_string())
            )),
        }
    }

    /// The path of the first `n` keys, None for none.
    fn prefix(&self, n: usize) -> Option<String> {
        (n > 0).then(|| self.0[..n].join("."))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_get_take_and_set_nested_fields() {
        let p = FieldPath::parse("a.b").unwrap();
        let mut v = json!({"a": {"b": 1, "c": 2}});
        assert_eq!(p.get(&v), Some(&json!(1)));
        assert_eq!(p.take(&mut v), Some(json!(1)));
        assert_eq!(v, json!({"a": {"c": 2}}));
        FieldPath::parse("x.y.z")
            .unwrap()
            .set(&mut v, json!(true))
            .unwrap();
        assert_eq!(v["x"]["y"]["z"], json!(true));
        let e = FieldPath::parse("a.c.d")
            .unwrap()
            .set(&mut v, json!(0))
            .unwrap_err();
        assert_eq!(e, "a.c is not an object");
        for bad in ["", ".a", "a.", "a..b"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad}");
        }
    }
}
