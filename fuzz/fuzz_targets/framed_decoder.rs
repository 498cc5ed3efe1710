//! Any bytes given as Kafka record values become rows or dead letters,
//! every record accounted for, never a panic. The input is split into
//! records at each 0xFE byte; most get a valid Confluent header for the one
//! schema the decoder knows, so the fuzzer reaches the Avro bodies, and one
//! in eight a wrong magic byte (the registry is never asked: there is none).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tributary_avro::{BodyCheck, RecordDecoder, RegistryClient, RegistryConfig};
use tributary_core::RawRecord;

const SCHEMA_ID: u32 = 7;
const SCHEMA: &str = r#"{"type": "record", "name": "Order", "namespace": "fuzz", "fields": [
    {"name": "id", "type": "long"},
    {"name": "name", "type": "string"},
    {"name": "price", "type": ["null", "double"]},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "attrs", "type": {"type": "map", "values": "int"}},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]}},
    {"name": "digest", "type": {"type": "fixed", "name": "Md5", "size": 4}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "nested", "type": ["null", {"type": "record", "name": "Inner", "fields": [
        {"name": "flag", "type": "boolean"}, {"name": "ratio", "type": "float"}]}]}
]}"#;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let registry = RegistryClient::new(RegistryConfig {
        url: "http://127.0.0.1:9".into(),
        max_retries: 0,
        timeout: std::time::Duration::from_millis(50),
        ..Default::default()
    })
    .unwrap();
    let mut decoder = RecordDecoder::new(Arc::new(registry), runtime().handle().clone());
    decoder.preload(SCHEMA_ID, SCHEMA).unwrap();
    let check = BodyCheck::compile(SCHEMA).unwrap();
    let mut values = Vec::new();
    for (i, part) in data.split(|b| *b == 0xFE).enumerate() {
        let mut value = Vec::with_capacity(part.len() + 5);
        if i % 8 == 7 {
            value.push(1);
        } else {
            value.push(0);
            value.extend_from_slice(&SCHEMA_ID.to_be_bytes());
        }
        value.extend_from_slice(part);
        let _ = check.check(value.get(5..).unwrap_or_default());
        values.push(value);
    }
    for (offset, value) in values.iter().enumerate() {
        let record = RawRecord {
            partition: 0,
            offset: offset as i64,
            timestamp_ms: Some(0),
            key: None,
            value: Some(value),
            headers: None,
        };
        decoder.push(&record).unwrap();
    }
    let chunk = decoder.finish().unwrap();
    let rows: usize = chunk.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows + chunk.dead_letters.len(), values.len());
});
