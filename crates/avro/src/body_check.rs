//! Checks an Avro body against its writer schema before it reaches the
//! Arrow decoder. A bad record fed to that decoder leaves it half-written,
//! so it must be rebuilt and fed every pending record again; checked first,
//! a bad record costs only its own bytes, and isolating bad records stays
//! linear however many there are.
//!
//! The check refuses only what the Avro specification (and so the decoder)
//! refuses: a body that ends early, a length or varint out of range, a union
//! branch or enum symbol that does not exist, a string that is not UTF-8,
//! bytes after the record. Anything it passes and the decoder still refuses
//! takes the slow path in `decoder.rs`.

use std::collections::HashMap;

use serde_json::Value;

/// The writer schema, compiled into a tree the check walks.
#[derive(Debug)]
pub struct BodyCheck {
    nodes: Vec<Node>,
    root: usize,
}

#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    /// `int` and `long` (and their logical types): a zig-zag varint.
    Varint,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum(usize),
    /// Indexes of the fields' nodes, in order.
    Record(Vec<usize>),
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    /// A named type used before its definition ends (a recursive schema):
    /// resolved once the whole schema is compiled.
    Named(String),
}

/// Deepest nesting checked; deeper bodies (only possible with recursive
/// schemas) are refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

/// Most items of zero bytes (nulls) one array block may hold: a few bytes
/// could otherwise ask the decoder for billions of rows.
const MAX_EMPTY_ITEMS: u64 = 1 << 20;

impl BodyCheck {
    /// `None` when the schema uses something the check does not know; the
    /// decoder alone then judges the records.
    pub fn compile(schema_json: &str) -> Option<BodyCheck> {
        let schema: Value = serde_json::from_str(schema_json).ok()?;
        let mut compiler = Compiler::default();
        let root = compiler.node(&schema, "")?;
        let Compiler { mut nodes, names } = compiler;
        for i in 0..nodes.len() {
            if let Node::Named(name) = &nodes[i] {
                let target = *names.get(name.as_str())?;
                nodes[i] = nodes[target].clone();
            }
        }
        Some(BodyCheck { nodes, root })
    }

    /// `Err` with the dead letter's reason when `body` is not exactly one
    /// record of the schema.
    pub fn check(&self, body: &[u8]) -> Result<(), String> {
        let mut reader = Reader { body, at: 0 };
        self.walk(self.root, &mut reader, 0).map_err(|e| match e {
            Fault::Truncated => {
                "truncated Avro body: the record ends before its schema does".to_string()
            }
            Fault::Invalid(m) => format!("invalid Avro body: {m}"),
        })?;
        match body.len() - reader.at {
            0 => Ok(()),
            n => Err(format!(
                "invalid Avro body: {n} trailing byte(s) after the record"
            )),
        }
    }

    fn walk(&self, node: usize, r: &mut Reader<'_>, depth: usize) -> Result<(), Fault> {
        if depth > MAX_DEPTH {
            return Err(Fault::Invalid(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        match &self.nodes[node] {
            Node::Null => Ok(()),
            Node::Boolean => r.skip(1),
            Node::Varint => r.varint().map(drop),
            Node::Float => r.skip(4),
            Node::Double => r.skip(8),
            Node::Bytes => {
                let n = r.length()?;
                r.skip(n)
            }
            Node::String => {
                let n = r.length()?;
                let text = r.take(n)?;
                if text.is_ascii() || std::str::from_utf8(text).is_ok() {
                    Ok(())
                } else {
                    Err(Fault::Invalid("a string is not valid UTF-8".into()))
                }
            }
            Node::Fixed(size) => r.skip(*size),
            Node::Enum(symbols) => {
                let i = r.varint()?;
                if i < 0 || i as usize >= *symbols {
                    return Err(Fault::Invalid(format!("enum symbol {i} of {symbols}")));
                }
                Ok(())
            }
            Node::Record(fields) => fields.iter().try_for_each(|&f| self.walk(f, r, depth + 1)),
            Node::Array(item) => {
                r.blocks(self.min_width(*item, 0), |r| self.walk(*item, r, depth + 1))
            }
            Node::Map(value) => r.blocks(1, |r| {
                let n = r.length()?;
                let key = r.take(n)?;
                std::str::from_utf8(key)
                    .map_err(|_| Fault::Invalid("a map key is not valid UTF-8".into()))?;
                self.walk(*value, r, depth + 1)
            }),
            Node::Union(branches) => {
                let i = r.varint()?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| {
                        Fault::Invalid(format!("union branch {i} of {}", branches.len()))
                    })?;
                self.walk(*branch, r, depth + 1)
            }
            Node::Named(_) => unreachable!("named references are resolved at compile time"),
        }
    }

    /// The fewest bytes a value of `node` takes.
    fn min_width(&self, node: usize, depth: usize) -> usize {
        match &self.nodes[node] {
            Node::Null => 0,
            Node::Fixed(n) => *n,
            Node::Float => 4,
            Node::Double => 8,
            Node::Record(fields) if depth < MAX_DEPTH => {
                fields.iter().map(|&f| self.min_width(f, depth + 1)).sum()
            }
            Node::Record(_) => 0,
            _ => 1,
        }
    }
}

enum Fault {
    Truncated,
    Invalid(String),
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Fault> {
        let end = self.at.checked_add(n).ok_or(Fault::Truncated)?;
        let bytes = self.body.get(self.at..end).ok_or(Fault::Truncated)?;
        self.at = end;
        Ok(bytes)
    }

    fn skip(&mut self, n: usize) -> Result<(), Fault> {
        self.take(n).map(drop)
    }

    #[inline]
    fn varint(&mut self) -> Result<i64, Fault> {
        // Most varints (small numbers, lengths) are one byte.
        if let Some(&byte) = self.body.get(self.at)
            && byte < 0x80
        {
            self.at += 1;
            return Ok(i64::from(byte >> 1) ^ -i64::from(byte & 1));
        }
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.body.get(self.at).ok_or(Fault::Truncated)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(Fault::Invalid("a varint is longer than 10 bytes".into()))
    }

    /// A length of bytes, a string or a map key.
    fn length(&mut self) -> Result<usize, Fault> {
        let n = self.varint()?;
        usize::try_from(n).map_err(|_| Fault::Invalid(format!("negative length {n}")))
    }

    /// Array and map blocks: a count, negative when followed by the block's
    /// size in bytes, until a count of zero.
    /// A count no body could hold is refused before any item is read, so a
    /// forged count costs nothing.
    fn blocks(
        &mut self,
        item_width: usize,
        mut item: impl FnMut(&mut Reader<'a>) -> Result<(), Fault>,
    ) -> Result<(), Fault> {
        loop {
            let count = self.varint()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.length()?;
            }
            let count = count.unsigned_abs();
            let left = (self.body.len() - self.at) as u64;
            if item_width > 0 && count > left / item_width as u64 {
                return Err(Fault::Truncated);
            }
            if item_width == 0 && count > MAX_EMPTY_ITEMS {
                return Err(Fault::Invalid(format!(
                    "a block of {count} empty items (at most {MAX_EMPTY_ITEMS})"
                )));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }
}

#[derive(Default)]
struct Compiler {
    nodes: Vec<Node>,
    /// Named types by full name (and by bare name, as references may use it).
    names: HashMap<String, usize>,
}

impl Compiler {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, schema: &Value, namespace: &str) -> Option<usize> {
        match schema {
            Value::String(name) => self.primitive_or_named(name, namespace),
            Value::Array(branches) => {
                let at = self.push(Node::Null);
                let branches = branches
                    .iter()
                    .map(|b| self.node(b, namespace))
                    .collect::<Option<Vec<_>>>()?;
                self.nodes[at] = Node::Union(branches);
                Some(at)
            }
            Value::Object(object) => {
                let kind = object.get("type")?;
                let Value::String(kind) = kind else {
                    // {"type": {...}}: a nested schema.
                    return self.node(kind, namespace);
                };
                match kind.as_str() {
                    "record" | "error" | "enum" | "fixed" => {
                        let (full, space) = full_name(object, namespace)?;
                        let at = self.push(Node::Null);
                        self.names.insert(full.clone(), at);
                        if let Some((_, bare)) = full.rsplit_once('.') {
                            self.names.entry(bare.to_string()).or_insert(at);
                        }
                        self.nodes[at] = match kind.as_str() {
                            "enum" => Node::Enum(object.get("symbols")?.as_array()?.len()),
                            "fixed" => {
                                Node::Fixed(usize::try_from(object.get("size")?.as_u64()?).ok()?)
                            }
                            _ => Node::Record(
                                object
                                    .get("fields")?
                                    .as_array()?
                                    .iter()
                                    .map(|f| self.node(f.get("type")?, &space))
                                    .collect::<Option<Vec<_>>>()?,
                            ),
                        };
                        Some(at)
                    }
                    "array" => {
                        let item = self.node(object.get("items")?, namespace)?;
                        Some(self.push(Node::Array(item)))
                    }
                    "map" => {
                        let value = self.node(object.get("values")?, namespace)?;
                        Some(self.push(Node::Map(value)))
                    }
                    other => self.primitive_or_named(other, namespace),
                }
            }
            _ => None,
        }
    }

    fn primitive_or_named(&mut self, name: &str, namespace: &str) -> Option<usize> {
        let node = match name {
            "null" => Node::Null,
            "boolean" => Node::Boolean,
            "int" | "long" => Node::Varint,
            "float" => Node::Float,
            "double" => Node::Double,
            "bytes" => Node::Bytes,
            "string" => Node::String,
            _ => {
                let full = if name.contains('.') || namespace.is_empty() {
                    name.to_string()
                } else {
                    format!("{namespace}.{name}")
                };
                return match self.names.get(&full).or_else(|| self.names.get(name)) {
                    // Referenced by index: a record still being compiled
                    // (a recursive schema) is fine, its node is reserved.
                    Some(&at) => Some(at),
                    None => Some(self.push(Node::Named(full))),
                };
            }
        };
        Some(self.push(node))
    }
}

/// A named type's full name and the namespace its fields inherit.
fn full_name(object: &serde_json::Map<String, Value>, enclosing: &str) -> Option<(String, String)> {
    let name = object.get("name")?.as_str()?;
    if name.contains('.') {
        let space = name.rsplit_once('.').map(|(s, _)| s).unwrap_or_default();
        return Some((name.to_string(), space.to_string()));
    }
    let space = object
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(enclosing);
    let full = if space.is_empty() {
        name.to_string()
    } else {
        format!("{space}.{name}")
    };
    Some((full, space.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "Order", "namespace": "shop",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "name", "type": "string"},
            {"name": "price", "type": ["null", "double"]},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "attrs", "type": {"type": "map", "values": "int"}},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
            {"name": "again", "type": "Kind"},
            {"name": "digest", "type": {"type": "fixed", "name": "Md5", "size": 4}},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}
        ]}"#;

    fn varint(n: i64) -> Vec<u8> {
        let mut v = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            if v < 0x80 {
                out.push(v as u8);
                return out;
            }
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
    }

    fn good() -> Vec<u8> {
        let mut b = varint(-42);
        b.extend(varint(3));
        b.extend(b"abc");
        b.extend(varint(1));
        b.extend(1.5f64.to_le_bytes());
        b.extend(varint(-1)); // one item, with its block size
        b.extend(varint(2));
        b.extend(varint(1));
        b.extend(b"x");
        b.extend(varint(0));
        b.extend(varint(1));
        b.extend(varint(1));
        b.extend(b"k");
        b.extend(varint(7));
        b.extend(varint(0));
        b.extend(varint(1));
        b.extend(varint(0));
        b.extend([1, 2, 3, 4]);
        b.extend(varint(1_700_000_000_000));
        b
    }

    #[test]
    fn a_well_formed_body_passes() {
        let check = BodyCheck::compile(SCHEMA).unwrap();
        assert_eq!(check.check(&good()), Ok(()));
    }

    #[test]
    fn every_way_of_being_malformed_is_named() {
        let check = BodyCheck::compile(SCHEMA).unwrap();
        let body = good();
        for cut in 0..body.len() {
            let err = check.check(&body[..cut]).unwrap_err();
            assert!(err.starts_with("truncated Avro body"), "{cut}: {err}");
        }
        let mut trailing = body.clone();
        trailing.extend([2, 4]);
        assert_eq!(
            check.check(&trailing).unwrap_err(),
            "invalid Avro body: 2 trailing byte(s) after the record"
        );
        assert!(
            check
                .check(&[0xff; 11])
                .unwrap_err()
                .contains("longer than 10 bytes")
        );
        let mut bad_utf8 = body.clone();
        bad_utf8[2] = 0xff;
        assert!(check.check(&bad_utf8).unwrap_err().contains("UTF-8"));
        let mut bad_branch = varint(1);
        bad_branch.extend(varint(0));
        bad_branch.extend(varint(2));
        assert!(
            check
                .check(&bad_branch)
                .unwrap_err()
                .contains("union branch 2 of 2")
        );
        let mut negative = varint(1);
        negative.extend(varint(-3));
        assert!(
            check
                .check(&negative)
                .unwrap_err()
                .contains("negative length")
        );
        // A forged item count fails at once instead of looping.
        let mut forged = varint(1);
        forged.extend(varint(0));
        forged.extend(varint(0));
        forged.extend(varint(i64::MAX));
        assert!(check.check(&forged).unwrap_err().starts_with("truncated"));
        let nulls = BodyCheck::compile(r#"{"type": "array", "items": "null"}"#).unwrap();
        assert!(
            nulls
                .check(&varint(i64::MAX))
                .unwrap_err()
                .contains("empty items")
        );
        assert_eq!(nulls.check(&[varint(3), varint(0)].concat()), Ok(()));
    }

    #[test]
    fn schemas_it_cannot_read_are_left_to_the_decoder() {
        assert!(BodyCheck::compile("not json").is_none());
        assert!(
            BodyCheck::compile(
                r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "Unknown"}]}"#
            )
            .is_none()
        );
        assert!(BodyCheck::compile(r#""string""#).is_some());
    }
}
