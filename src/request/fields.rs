//! Typed extraction of fields from a JSON object, so every type error names its field.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::Rejection;

pub(super) struct Fields {
    map: Map<String, Value>,
    /// Where this object sits in the body (`artifacts[0]`); empty at the top.
    prefix: String,
}

impl Fields {
    pub(super) fn new(map: Map<String, Value>) -> Self {
        Self {
            map,
            prefix: String::new(),
        }
    }

    /// A member's full name for errors: `artifacts[0].path`.
    fn named(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Removes a field; JSON `null` counts as absent.
    fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    pub(super) fn string(&mut self, name: &str) -> Result<Option<String>, Rejection> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(&self.named(name), "a string", &other)),
        }
    }

    pub(super) fn boolean(&mut self, name: &str) -> Result<Option<bool>, Rejection> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(wrong_type(name, "true or false", &other)),
        }
    }

    /// A string field with an alias (`user_id` / `userID`); both present must agree.
    pub(super) fn string_aliased(
        &mut self,
        name: &str,
        alias: &str,
    ) -> Result<Option<String>, Rejection> {
        let main = self.string(name)?;
        let other = self.string(alias)?;
        match (main, other) {
            (Some(a), Some(b)) if a != b => Err(Rejection::new(
                name,
                format!("conflicts with its alias `{alias}`"),
            )),
            (a, b) => Ok(a.or(b)),
        }
    }

    pub(super) fn string_list(&mut self, name: &str, max: usize) -> Result<Vec<String>, Rejection> {
        let Some(value) = self.take(name) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(wrong_type(name, "an array of strings", &value));
        };
        if items.len() > max {
            return Err(Rejection::new(name, format!("has more than {max} entries")));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                other => Err(wrong_type(&format!("{name}[{i}]"), "a string", &other)),
            })
            .collect()
    }

    /// An array of objects, each handed back as its own `Fields` with its path (`name[i]`) for
    /// the errors of its members.
    pub(super) fn object_list(
        &mut self,
        name: &str,
        max: usize,
    ) -> Result<Vec<(String, Fields)>, Rejection> {
        let Some(value) = self.take(name) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(wrong_type(name, "an array of objects", &value));
        };
        if items.len() > max {
            return Err(Rejection::new(name, format!("has more than {max} entries")));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("{name}[{i}]");
                match item {
                    Value::Object(map) => Ok((path.clone(), Fields { map, prefix: path })),
                    other => Err(wrong_type(&path, "an object", &other)),
                }
            })
            .collect()
    }

    /// An object, handed back as its own `Fields` (errors name `name.member`).
    pub(super) fn object(&mut self, name: &str) -> Result<Option<Fields>, Rejection> {
        let path = self.named(name);
        match self.take(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields { map, prefix: path })),
            Some(other) => Err(wrong_type(&path, "an object", &other)),
        }
    }

    pub(super) fn string_map(
        &mut self,
        name: &str,
        max: usize,
    ) -> Result<BTreeMap<String, String>, Rejection> {
        let Some(value) = self.take(name) else {
            return Ok(BTreeMap::new());
        };
        let Value::Object(entries) = value else {
            return Err(wrong_type(name, "an object of strings", &value));
        };
        if entries.len() > max {
            return Err(Rejection::new(name, format!("has more than {max} entries")));
        }
        entries
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(wrong_type(&format!("{name}.{k}"), "a string", &other)),
            })
            .collect()
    }

    /// Fails on the first field nobody asked for: a typo must not silently change a build.
    pub(super) fn finish(self) -> Result<(), Rejection> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(key) => Err(Rejection::new(
                &self.named(&super::types::truncate(key, 64)),
                "is not a known field",
            )),
        }
    }
}

fn wrong_type(name: &str, expected: &str, got: &Value) -> Rejection {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    Rejection::new(name, format!("must be {expected}, got {kind}"))
}
