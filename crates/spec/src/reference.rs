//! The spec reference in `docs/spec-reference.md` and the JSON Schema, both
//! generated from the spec structs so they cannot drift from the code.

use serde_json::Value;

use crate::model::TableSpec;

/// JSON Schema of a table spec (editors can validate YAML against it).
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(TableSpec)).unwrap_or(Value::Null)
}

/// Markdown reference of every spec field, in document order.
pub fn reference_markdown() -> String {
    let schema = json_schema();
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let mut out = String::from(
        "# Table spec reference\n\n\
         <!-- Generated from crates/spec/src/model.rs by `tributary spec-reference`; a test fails when this file is stale. -->\n\n\
         A table spec is one YAML document per pipeline. Unknown fields are errors. \
         `tributary validate FILE...` checks specs and prints every problem as `file:line: field.path: message`.\n\n",
    );
    let section = |title: &str,
                   obj: &Value,
                   prefix: &str,
                   out: &mut String,
                   queue: &mut Vec<(String, Value)>| {
        out.push_str(&format!("## `{title}`\n\n"));
        if let Some(d) = obj.get("description").and_then(Value::as_str) {
            out.push_str(&format!("{}\n\n", one_line(d)));
        }
        out.push_str(
            "| field | type | required | default | description |\n|---|---|---|---|---|\n",
        );
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                let (ty, target) = type_of(prop, &defs);
                if let Some(t) = target
                    && t.get("properties").is_some()
                {
                    queue.push((path.clone(), t));
                }
                let default = prop
                    .get("default")
                    .map(|d| format!("`{d}`"))
                    .unwrap_or_default();
                let desc = prop
                    .get("description")
                    .and_then(Value::as_str)
                    .map(one_line)
                    .unwrap_or_default();
                let req = if required.contains(&name.as_str()) {
                    "yes"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "| `{path}` | {ty} | {req} | {default} | {desc} |\n"
                ));
            }
        }
        out.push('\n');
    };
    let mut queue = vec![(String::new(), schema.clone())];
    while !queue.is_empty() {
        let (prefix, obj) = queue.remove(0);
        let title = if prefix.is_empty() {
            "(top level)".to_string()
        } else {
            prefix.clone()
        };
        let mut found = Vec::new();
        section(&title, &obj, &prefix, &mut out, &mut found);
        // Depth-first keeps sections in document order.
        for (i, item) in found.into_iter().enumerate() {
            queue.insert(i, item);
        }
    }
    out
}

/// A readable type name, and the object definition when it has fields.
fn type_of(prop: &Value, defs: &Value) -> (String, Option<Value>) {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        let def = defs.get(name).cloned().unwrap_or(Value::Null);
        if let Some(values) = enum_values(&def) {
            return (values, None);
        }
        let ty = match def.get("type") {
            Some(Value::String(t)) if t == "object" => "object".to_string(),
            _ => name.to_lowercase(),
        };
        return (ty, Some(def));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = prop.get(key).and_then(Value::as_array) {
            let non_null: Vec<&Value> = alts
                .iter()
                .filter(|a| a.get("type") != Some(&Value::from("null")))
                .collect();
            if let [only] = non_null.as_slice() {
                return type_of(only, defs);
            }
        }
    }
    let ty = match prop.get("type") {
        Some(Value::String(t)) if t == "object" => "map of string".to_string(),
        Some(Value::String(t)) if t == "array" => "list of string".to_string(),
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_string(),
    };
    (ty, None)
}

fn enum_values(def: &Value) -> Option<String> {
    let alts = def.get("oneOf").or_else(|| def.get("anyOf"))?.as_array()?;
    let values: Option<Vec<String>> = alts
        .iter()
        .map(|a| {
            a.get("const")
                .or_else(|| a.get("enum").and_then(|e| e.get(0)))
                .and_then(Value::as_str)
                .map(|s| format!("`{s}`"))
        })
        .collect();
    values.map(|v| v.join(" \\| ")).or_else(|| {
        def.get("enum")?.as_array().map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(" \\| ")
        })
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_lists_nested_fields_with_docs() {
        let md = reference_markdown();
        assert!(
            md.contains("| `source.kafka.topic` | string | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| `trigger.interval` | duration |  | `\"1s\"` |"),
            "{md}"
        );
        assert!(md.contains("`earliest` \\| `latest`"), "{md}");
    }

    /// The committed reference must match the structs. Regenerate with
    /// `cargo run -p tributary -- spec-reference > docs/spec-reference.md`.
    #[test]
    fn committed_reference_is_current() {
        // At run time, not compile time: a build cache shared by two checkouts
        // must not read the other checkout's docs.
        let path = format!(
            "{}/../../docs/spec-reference.md",
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests")
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == reference_markdown(),
            "docs/spec-reference.md is stale: run `cargo run -p tributary -- spec-reference > docs/spec-reference.md`"
        );
    }
}
