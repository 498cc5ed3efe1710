//! Schema references: a schema may use named types (records, enums, fixed)
//! that other subjects define. The decoder needs one self-contained schema,
//! so each referenced type is inlined where it is first used; later uses of
//! its name then refer to that definition, as Avro's naming rules say.

use std::collections::HashSet;

use serde_json::Value;

/// `schema` with every type of `named` (full name, schema) inlined at its
/// first use.
pub(crate) fn inline(schema: &str, named: &[(String, Value)]) -> Result<String, String> {
    let mut root: Value =
        serde_json::from_str(schema).map_err(|e| format!("the schema is not JSON: {e}"))?;
    let mut defined = HashSet::new();
    inline_type(&mut root, "", named, &mut defined);
    Ok(root.to_string())
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

fn inline_type(
    t: &mut Value,
    namespace: &str,
    named: &[(String, Value)],
    defined: &mut HashSet<String>,
) {
    match t {
        Value::String(name) => {
            let full = full_name(name, namespace);
            if defined.contains(&full) {
                return;
            }
            if let Some((_, schema)) = named.iter().find(|(n, _)| *n == full || n == name) {
                *t = schema.clone();
                inline_type(t, namespace, named, defined);
            }
        }
        Value::Array(union) => {
            for member in union {
                inline_type(member, namespace, named, defined);
            }
        }
        Value::Object(o) => {
            let mut inner = namespace.to_string();
            let is_named = matches!(
                o.get("type").and_then(Value::as_str),
                Some("record" | "error" | "enum" | "fixed")
            );
            if is_named && let Some(name) = o.get("name").and_then(Value::as_str) {
                let ns = o
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(namespace);
                let full = full_name(name, ns);
                inner = full
                    .rsplit_once('.')
                    .map(|(n, _)| n.to_string())
                    .unwrap_or_default();
                defined.insert(full);
            }
            if let Some(fields) = o.get_mut("fields").and_then(Value::as_array_mut) {
                for field in fields {
                    if let Some(ft) = field.get_mut("type") {
                        inline_type(ft, &inner, named, defined);
                    }
                }
            }
            for key in ["items", "values"] {
                if let Some(child) = o.get_mut(key) {
                    inline_type(child, &inner, named, defined);
                }
            }
            if !is_named && let Some(ty) = o.get_mut("type") {
                inline_type(ty, &inner, named, defined);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_referenced_type_is_inlined_once_and_named_after() {
        let geo = json!({"type": "record", "name": "Geo", "namespace": "shared",
                         "fields": [{"name": "lat", "type": "double"}]});
        let order = json!({"type": "record", "name": "Order", "namespace": "shop", "fields": [
            {"name": "from", "type": "shared.Geo"},
            {"name": "to", "type": ["null", "shared.Geo"]},
            {"name": "stops", "type": {"type": "array", "items": "shared.Geo"}},
        ]});
        let out: Value = serde_json::from_str(
            &inline(&order.to_string(), &[("shared.Geo".into(), geo.clone())]).unwrap(),
        )
        .unwrap();
        assert_eq!(out["fields"][0]["type"], geo);
        assert_eq!(out["fields"][1]["type"], json!(["null", "shared.Geo"]));
        assert_eq!(out["fields"][2]["type"]["items"], json!("shared.Geo"));
        // A schema without references is unchanged.
        let plain =
            json!({"type": "record", "name": "P", "fields": [{"name": "n", "type": "long"}]});
        assert_eq!(
            serde_json::from_str::<Value>(&inline(&plain.to_string(), &[]).unwrap()).unwrap(),
            plain
        );
    }
}
