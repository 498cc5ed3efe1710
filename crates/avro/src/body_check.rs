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
//!
//! The schema is compiled into flat blocks of operations: a record's fields,
//! nested records included, are one block run in a single loop, and only
//! unions, arrays, maps and recursive references enter another block. While
//! malformed records keep arriving every record is checked, so the check is
//! kept to a few nanoseconds a field.

use std::collections::HashMap;

use serde_json::Value;

/// The writer schema, compiled into blocks of operations.
#[derive(Debug)]
pub struct BodyCheck {
    /// Every block's operations, one block after another.
    ops: Vec<Op>,
    /// Each block's range in `ops`: start and length.
    blocks: Vec<(u32, u32)>,
    /// Each union's branches, as blocks.
    unions: Vec<Vec<u32>>,
    root: u32,
}

/// One step of the check: small and `Copy`, so a block is a tight loop.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// `int` and `long` (and their logical types): a zig-zag varint.
    Varint,
    /// Bytes of a fixed size: `boolean`, `float`, `double`, `fixed`.
    Skip(u32),
    Bytes,
    String,
    /// An enum's symbol index, below its count of symbols.
    Enum(u32),
    /// A union of `null` and one other type, whose `len` operations follow
    /// inline: skipped when the branch read is `null` (branch `null_branch`).
    Nullable {
        null_branch: u32,
        len: u32,
    },
    /// Any other union, by its index in `unions`.
    Union(u32),
    /// An array of `items` blocks, each at least `min_width` bytes.
    Array {
        items: u32,
        min_width: u32,
    },
    /// A map of string keys to `values` blocks.
    Map(u32),
    /// A record's block entered instead of inlined: a record referenced
    /// while it is compiled (a recursive schema), or a large one.
    Call(u32),
}

/// Deepest nesting checked (blocks entered); deeper bodies (only possible
/// with recursive schemas) are refused rather than risking the stack.
const MAX_DEPTH: u32 = 64;

/// Most items of zero bytes (nulls) one array block may hold: a few bytes
/// could otherwise ask the decoder for billions of rows.
const MAX_EMPTY_ITEMS: u64 = 1 << 20;

/// A record of more operations than this is entered where it is referenced
/// again instead of copied, so a schema that uses a large record many times
/// (or nests such uses) cannot blow up the compiled check.
const MAX_INLINED: usize = 64;

impl BodyCheck {
    /// `None` when the schema uses something the check does not know; the
    /// decoder alone then judges the records.
    pub fn compile(schema_json: &str) -> Option<BodyCheck> {
        let schema: Value = serde_json::from_str(schema_json).ok()?;
        let mut compiler = Compiler::default();
        let root = compiler.block(&schema, "")?;
        let Compiler {
            ops,
            blocks,
            unions,
            ..
        } = compiler;
        Some(BodyCheck {
            ops,
            blocks,
            unions,
            root,
        })
    }

    /// `Err` with the dead letter's reason when `body` is not exactly one
    /// record of the schema.
    pub fn check(&self, body: &[u8]) -> Result<(), String> {
        let mut reader = Reader {
            body,
            at: 0,
            fault: Fault::Truncated,
        };
        self.run(self.root, &mut reader, 0)
            .map_err(|Stop| reader.fault.reason())?;
        match body.len() - reader.at {
            0 => Ok(()),
            n => Err(format!(
                "invalid Avro body: {n} trailing byte(s) after the record"
            )),
        }
    }

    fn run(&self, block: u32, r: &mut Reader<'_>, depth: u32) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(r.fail(Fault::TooDeep));
        }
        let (start, len) = self.blocks[block as usize];
        let ops = &self.ops[start as usize..(start + len) as usize];
        let mut at = 0;
        while let Some(&op) = ops.get(at) {
            at += 1;
            match op {
                Op::Varint => r.skip_varint()?,
                Op::Skip(n) => r.skip(n as usize)?,
                Op::Bytes => {
                    let n = r.length()?;
                    r.skip(n)?;
                }
                Op::String => {
                    if !r.string()? {
                        return Err(r.fail(Fault::StringUtf8));
                    }
                }
                Op::Enum(symbols) => {
                    let i = r.varint()?;
                    if !(0..i64::from(symbols)).contains(&i) {
                        return Err(r.fail(Fault::Enum(i, symbols)));
                    }
                }
                Op::Nullable { null_branch, len } => match r.varint()? {
                    branch if branch == i64::from(null_branch) => at += len as usize,
                    branch if branch == i64::from(1 - null_branch) => {}
                    branch => return Err(r.fail(Fault::Branch(branch, 2))),
                },
                Op::Union(union) => {
                    let branches = &self.unions[union as usize];
                    let i = r.varint()?;
                    let Some(branch) = usize::try_from(i).ok().and_then(|i| branches.get(i)) else {
                        return Err(r.fail(Fault::Branch(i, branches.len())));
                    };
                    self.run(*branch, r, depth + 1)?;
                }
                Op::Array { items, min_width } => {
                    r.blocks(min_width, |r| self.run(items, r, depth + 1))?;
                }
                Op::Map(values) => r.blocks(1, |r| {
                    let n = r.length()?;
                    if !is_utf8(r.take(n)?) {
                        return Err(r.fail(Fault::KeyUtf8));
                    }
                    self.run(values, r, depth + 1)
                })?,
                Op::Call(record) => self.run(record, r, depth + 1)?,
            }
        }
        Ok(())
    }
}

/// Most strings are ASCII: their bytes are OR-ed eight at a time (a short
/// string's first and last eight, or four, overlapping), and only others pay
/// for a full UTF-8 validation.
#[inline(always)]
fn is_utf8(text: &[u8]) -> bool {
    let word = |w: &[u8]| <[u8; 8]>::try_from(w).map_or(u64::MAX, u64::from_le_bytes);
    let n = text.len();
    let high = if n >= 8 {
        let ends = word(&text[..8]) | word(&text[n - 8..]);
        if n <= 16 {
            ends
        } else {
            text.chunks_exact(8)
                .map(word)
                .fold(ends, |high, w| high | w)
        }
    } else if n >= 4 {
        let half = |w: &[u8]| <[u8; 4]>::try_from(w).map_or(u32::MAX, u32::from_le_bytes);
        u64::from(half(&text[..4]) | half(&text[n - 4..]))
    } else {
        text.iter().fold(0, |high, &byte| high | u64::from(byte))
    };
    high & 0x8080_8080_8080_8080 == 0 || std::str::from_utf8(text).is_ok()
}

/// A body failed; why is in `Reader::fault`. Zero-sized, so the check's
/// results stay in registers.
struct Stop;

/// Why a body failed; its reason is written only for a bad record.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Truncated,
    LongVarint,
    NegativeLength(i64),
    StringUtf8,
    KeyUtf8,
    Enum(i64, u32),
    Branch(i64, usize),
    TooDeep,
    EmptyItems(u64),
}

impl Fault {
    fn reason(self) -> String {
        // One allocation each, and no formatting for the fixed ones: a
        // stream of bad records pays this per record.
        match self {
            Fault::Truncated => {
                "truncated Avro body: the record ends before its schema does".into()
            }
            Fault::LongVarint => "invalid Avro body: a varint is longer than 10 bytes".into(),
            Fault::NegativeLength(n) => format!("invalid Avro body: negative length {n}"),
            Fault::StringUtf8 => "invalid Avro body: a string is not valid UTF-8".into(),
            Fault::KeyUtf8 => "invalid Avro body: a map key is not valid UTF-8".into(),
            Fault::Enum(i, of) => format!("invalid Avro body: enum symbol {i} of {of}"),
            Fault::Branch(i, of) => format!("invalid Avro body: union branch {i} of {of}"),
            Fault::TooDeep => {
                format!("invalid Avro body: nested deeper than {MAX_DEPTH} levels")
            }
            Fault::EmptyItems(n) => {
                format!("invalid Avro body: a block of {n} empty items (at most {MAX_EMPTY_ITEMS})")
            }
        }
    }
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
    /// Why the check stopped: truncated unless a step says otherwise.
    fault: Fault,
}

impl<'a> Reader<'a> {
    #[cold]
    fn fail(&mut self, fault: Fault) -> Stop {
        self.fault = fault;
        Stop
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        let end = self.at.checked_add(n).ok_or(Stop)?;
        let bytes = self.body.get(self.at..end).ok_or(Stop)?;
        self.at = end;
        Ok(bytes)
    }

    #[inline(always)]
    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        self.take(n).map(drop)
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<i64, Stop> {
        // Most varints (small numbers, lengths) are one byte.
        if let Some(&byte) = self.body.get(self.at)
            && byte < 0x80
        {
            self.at += 1;
            return Ok(i64::from(byte >> 1) ^ -i64::from(byte & 1));
        }
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.body.get(self.at).ok_or(Stop)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(self.fail(Fault::LongVarint))
    }

    /// Skips a varint whose value is not needed: its end is found in one
    /// word, without a branch per byte, when eight bytes are left.
    #[inline(always)]
    fn skip_varint(&mut self) -> Result<(), Stop> {
        if let Some(word) = self.body.get(self.at..).and_then(<[u8]>::first_chunk::<8>) {
            let ends = !u64::from_le_bytes(*word) & 0x8080_8080_8080_8080;
            if ends != 0 {
                self.at += (ends.trailing_zeros() / 8 + 1) as usize;
                return Ok(());
            }
        }
        self.varint().map(drop)
    }

    /// Reads a string; whether it is UTF-8. A string of up to 16 bytes with
    /// 16 bytes of body from its start is tested as one masked word, with no
    /// branch on its length.
    #[inline(always)]
    fn string(&mut self) -> Result<bool, Stop> {
        let n = self.length()?;
        let start = self.at;
        let text = self.take(n)?;
        if n <= 16
            && let Some(chunk) = self.body.get(start..).and_then(<[u8]>::first_chunk::<16>)
        {
            let within = u128::MAX.checked_shr(8 * (16 - n) as u32).unwrap_or(0);
            let high_bits = u128::MAX / 0xff * 0x80;
            let bits = u128::from_le_bytes(*chunk) & within & high_bits;
            return Ok(bits == 0 || std::str::from_utf8(text).is_ok());
        }
        Ok(is_utf8(text))
    }

    /// A length of bytes, a string or a map key.
    #[inline(always)]
    fn length(&mut self) -> Result<usize, Stop> {
        let n = self.varint()?;
        usize::try_from(n).map_err(|_| self.fail(Fault::NegativeLength(n)))
    }

    /// Array and map blocks: a count, negative when followed by the block's
    /// size in bytes, until a count of zero.
    /// A count no body could hold is refused before any item is read, so a
    /// forged count costs nothing.
    fn blocks(
        &mut self,
        item_width: u32,
        mut item: impl FnMut(&mut Reader<'a>) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
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
            if item_width > 0 && count > left / u64::from(item_width) {
                return Err(Stop);
            }
            if item_width == 0 && count > MAX_EMPTY_ITEMS {
                return Err(self.fail(Fault::EmptyItems(count)));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }
}

#[derive(Default)]
struct Compiler {
    ops: Vec<Op>,
    blocks: Vec<(u32, u32)>,
    unions: Vec<Vec<u32>>,
    /// Named types by full name (and by bare name, as references may use
    /// it): their index in `named`.
    names: HashMap<String, usize>,
    named: Vec<Named>,
}

/// What a reference to a named type compiles to.
#[derive(Clone)]
enum Named {
    /// An enum's or a fixed's operation.
    Op(Op),
    /// A record's block, and its operations once compiled (copied where the
    /// record is referenced again, unless large).
    Record { block: u32, ops: Option<Vec<Op>> },
}

impl Compiler {
    /// Compiles `schema` into a block of its own (a record defined here is
    /// its own block).
    fn block(&mut self, schema: &Value, namespace: &str) -> Option<u32> {
        let mut ops = Vec::new();
        if let Value::Object(object) = schema
            && let Some("record" | "error") = object.get("type").and_then(Value::as_str)
        {
            return self.emit_record(object, namespace, &mut ops);
        }
        self.emit(schema, namespace, &mut ops)?;
        let range = self.place(&ops)?;
        self.blocks.push(range);
        u32::try_from(self.blocks.len() - 1).ok()
    }

    /// Appends a block's operations to the program: its range.
    fn place(&mut self, ops: &[Op]) -> Option<(u32, u32)> {
        let start = u32::try_from(self.ops.len()).ok()?;
        self.ops.extend_from_slice(ops);
        Some((start, u32::try_from(ops.len()).ok()?))
    }

    /// Appends the operations of `schema` to `out`.
    fn emit(&mut self, schema: &Value, namespace: &str, out: &mut Vec<Op>) -> Option<()> {
        match schema {
            Value::String(name) => self.emit_name(name, namespace, out),
            Value::Array(branches) => {
                if let [a, b] = &branches[..]
                    && let Some(null_branch) = [a, b].iter().position(|t| *t == "null")
                {
                    let mut other = Vec::new();
                    self.emit(if null_branch == 0 { b } else { a }, namespace, &mut other)?;
                    out.push(Op::Nullable {
                        null_branch: u32::from(null_branch == 1),
                        len: u32::try_from(other.len()).ok()?,
                    });
                    out.extend_from_slice(&other);
                    return Some(());
                }
                let branches = branches
                    .iter()
                    .map(|b| self.block(b, namespace))
                    .collect::<Option<Vec<_>>>()?;
                out.push(Op::Union(u32::try_from(self.unions.len()).ok()?));
                self.unions.push(branches);
                Some(())
            }
            Value::Object(object) => {
                let kind = object.get("type")?;
                let Value::String(kind) = kind else {
                    // {"type": {...}}: a nested schema.
                    return self.emit(kind, namespace, out);
                };
                match kind.as_str() {
                    "record" | "error" => self.emit_record(object, namespace, out).map(drop),
                    "enum" | "fixed" => {
                        let op = if kind == "enum" {
                            Op::Enum(u32::try_from(object.get("symbols")?.as_array()?.len()).ok()?)
                        } else {
                            Op::Skip(u32::try_from(object.get("size")?.as_u64()?).ok()?)
                        };
                        self.name(object, namespace, Named::Op(op))?;
                        out.push(op);
                        Some(())
                    }
                    "array" => {
                        let items = self.block(object.get("items")?, namespace)?;
                        let min_width = self.min_width(items);
                        out.push(Op::Array { items, min_width });
                        Some(())
                    }
                    "map" => {
                        let values = self.block(object.get("values")?, namespace)?;
                        out.push(Op::Map(values));
                        Some(())
                    }
                    other => self.emit_name(other, namespace, out),
                }
            }
            _ => None,
        }
    }

    /// A record's fields are copied into `out`; the record also gets a
    /// block of its own, reserved first so a recursive reference can enter
    /// it: that block.
    fn emit_record(
        &mut self,
        object: &serde_json::Map<String, Value>,
        namespace: &str,
        out: &mut Vec<Op>,
    ) -> Option<u32> {
        let block = u32::try_from(self.blocks.len()).ok()?;
        self.blocks.push((0, 0));
        let (named, space) = self.name(object, namespace, Named::Record { block, ops: None })?;
        let mut ops = Vec::new();
        for field in object.get("fields")?.as_array()? {
            self.emit(field.get("type")?, &space, &mut ops)?;
        }
        self.blocks[block as usize] = self.place(&ops)?;
        out.extend_from_slice(&ops);
        self.named[named] = Named::Record {
            block,
            ops: Some(ops),
        };
        Some(block)
    }

    /// Records a named type under its full name, and under its bare name
    /// unless another type took that first: its index in `named`, and the
    /// namespace its fields inherit.
    fn name(
        &mut self,
        object: &serde_json::Map<String, Value>,
        namespace: &str,
        named: Named,
    ) -> Option<(usize, String)> {
        let (full, space) = full_name(object, namespace)?;
        let at = self.named.len();
        self.named.push(named);
        if let Some((_, bare)) = full.rsplit_once('.') {
            self.names.entry(bare.to_string()).or_insert(at);
        }
        self.names.insert(full, at);
        Some((at, space))
    }

    fn emit_name(&mut self, name: &str, namespace: &str, out: &mut Vec<Op>) -> Option<()> {
        let op = match name {
            "null" => return Some(()),
            "boolean" => Op::Skip(1),
            "int" | "long" => Op::Varint,
            "float" => Op::Skip(4),
            "double" => Op::Skip(8),
            "bytes" => Op::Bytes,
            "string" => Op::String,
            _ => {
                let full = if name.contains('.') || namespace.is_empty() {
                    name.to_string()
                } else {
                    format!("{namespace}.{name}")
                };
                // Avro defines a name before its uses; an unknown one leaves
                // the schema to the decoder.
                let at = *self.names.get(&full).or_else(|| self.names.get(name))?;
                match &self.named[at] {
                    Named::Op(op) => *op,
                    Named::Record {
                        ops: Some(ops),
                        block,
                    } => {
                        if ops.len() > MAX_INLINED {
                            Op::Call(*block)
                        } else {
                            out.extend_from_slice(ops);
                            return Some(());
                        }
                    }
                    Named::Record { block, ops: None } => Op::Call(*block),
                }
            }
        };
        out.push(op);
        Some(())
    }

    /// The fewest bytes a value of `block` takes. A record entered by
    /// reference counts as none: it may still be compiling.
    fn min_width(&self, block: u32) -> u32 {
        let (start, len) = self.blocks[block as usize];
        let ops = &self.ops[start as usize..(start + len) as usize];
        let (mut width, mut at) = (0u32, 0);
        while let Some(op) = ops.get(at) {
            at += 1;
            width = width.saturating_add(match op {
                Op::Skip(n) => *n,
                Op::Call(_) => 0,
                // The branch may be null: only its index counts.
                Op::Nullable { len, .. } => {
                    at += *len as usize;
                    1
                }
                _ => 1,
            });
        }
        width
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
    fn strings_and_varints_of_every_length_are_judged_alike_with_or_without_bytes_after() {
        // Short strings and varints are tested a word at a time when the
        // body has a word left from where they start; the padding after
        // them decides which way is taken, and must not change the answer.
        let check = BodyCheck::compile(
            r#"{"type": "record", "name": "S", "fields": [
                {"name": "s", "type": "string"},
                {"name": "n", "type": "long"},
                {"name": "pad", "type": "bytes"}]}"#,
        )
        .unwrap();
        let body = |text: &[u8], n: i64, pad: usize| {
            [
                varint(text.len() as i64),
                text.to_vec(),
                varint(n),
                varint(pad as i64),
                vec![0xee; pad],
            ]
            .concat()
        };
        for pad in [0, 40] {
            for len in 0..=40 {
                let ascii = vec![b'a'; len];
                assert_eq!(check.check(&body(&ascii, 1, pad)), Ok(()), "{len}, {pad}");
                for at in 0..len {
                    let mut text = ascii.clone();
                    text[at] = 0xc3; // a lone lead byte: not UTF-8
                    let err = check.check(&body(&text, 1, pad)).unwrap_err();
                    assert!(err.contains("UTF-8"), "{len}, {at}, {pad}: {err}");
                    if at + 1 < len {
                        text[at + 1] = 0xa9; // with its continuation: é
                        assert_eq!(check.check(&body(&text, 1, pad)), Ok(()), "{len}, {at}");
                    }
                }
            }
            for n in (0..63)
                .map(|bits| (1_i64 << bits) - 1)
                .chain([i64::MIN, i64::MAX])
            {
                assert_eq!(check.check(&body(b"x", n, pad)), Ok(()), "{n}, {pad}");
                let whole = body(b"x", n, pad);
                let cut = 2 + varint(n).len() - 1;
                let err = check.check(&whole[..cut]).unwrap_err();
                assert!(err.starts_with("truncated"), "{n}, {pad}: {err}");
            }
        }
    }

    #[test]
    fn recursive_and_reused_records_are_checked() {
        let list = BodyCheck::compile(
            r#"{"type": "record", "name": "Node", "fields": [
                {"name": "value", "type": "int"},
                {"name": "next", "type": ["null", "Node"]}]}"#,
        )
        .unwrap();
        // 1 -> 2 -> 3 -> end.
        let three = [
            varint(1),
            varint(1),
            varint(2),
            varint(1),
            varint(3),
            varint(0),
        ]
        .concat();
        assert_eq!(list.check(&three), Ok(()));
        assert!(
            list.check(&three[..5])
                .unwrap_err()
                .starts_with("truncated")
        );
        let endless: Vec<u8> = [varint(1), varint(1)].concat().repeat(100);
        assert!(list.check(&endless).unwrap_err().contains("deeper than 64"));

        let pair = BodyCheck::compile(
            r#"{"type": "record", "name": "Pair", "fields": [
                {"name": "a", "type": {"type": "record", "name": "P", "fields": [
                    {"name": "x", "type": "double"}, {"name": "ok", "type": "boolean"}]}},
                {"name": "b", "type": "P"},
                {"name": "c", "type": {"type": "array", "items": "P"}}]}"#,
        )
        .unwrap();
        let body = [vec![0; 18], varint(2), vec![0; 18], varint(0)].concat();
        assert_eq!(pair.check(&body), Ok(()));
        // Two items announced, only one there: refused before reading any.
        assert!(
            pair.check(&body[..body.len() - 10])
                .unwrap_err()
                .starts_with("truncated")
        );
    }

    #[test]
    fn a_schema_reusing_large_records_stays_small() {
        // Each level holds the previous one twice: copied, 2^20 fields.
        let mut schema = r#"{"type": "record", "name": "L0", "fields": [
            {"name": "a", "type": "long"}, {"name": "b", "type": "string"}]}"#
            .to_string();
        for level in 1..=20 {
            let below = level - 1;
            schema = format!(
                r#"{{"type": "record", "name": "L{level}", "fields": [
                    {{"name": "x", "type": {schema}}}, {{"name": "y", "type": "L{below}"}}]}}"#
            );
        }
        let check = BodyCheck::compile(&schema).unwrap();
        assert!(check.ops.len() < 10_000, "{} operations", check.ops.len());
        let leaf = [varint(5), varint(1), b"z".to_vec()].concat();
        assert_eq!(check.check(&leaf.repeat(1 << 20)), Ok(()));
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
