//! Avro in the Confluent wire format: the schema-registry client, decoding
//! straight into Arrow, and the mapping of Avro/Arrow types onto Delta types.

mod body_check;
pub use body_check::BodyCheck;
mod decoder;
mod delta_types;
mod error;
mod references;
mod registry;

pub use decoder::{
    DecodedChunk, FutureBound, KeyFormat, RecordColumns, RecordDecoder, SCHEMA_ID_METADATA,
    SchemaGate, arrow_schema_of,
};
pub use delta_types::{delta_schema, to_delta_batch};
pub use error::{AvroError, Result};
pub use registry::{
    RegistryAuth, RegistryClient, RegistryConfig, RegistrySchema, SchemaReference, SecretSource,
};

/// The first byte of every Confluent-framed message.
pub const CONFLUENT_MAGIC: u8 = 0;

/// Splits a Confluent-framed message into its schema id and Avro body.
pub fn split_frame(message: &[u8]) -> std::result::Result<(u32, &[u8]), String> {
    match message {
        [] => Err("empty value: no Confluent header".into()),
        [m, ..] if *m != CONFLUENT_MAGIC => Err(format!(
            "not Confluent wire format: first byte is 0x{m:02x}, expected magic byte 0x00"
        )),
        [_, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => Err(format!(
            "truncated Confluent header: {} bytes, expected at least 5",
            message.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_or_explained() {
        assert_eq!(
            split_frame(&[0, 0, 0, 1, 2, 9, 9]).unwrap(),
            (258, &[9u8, 9][..])
        );
        assert!(split_frame(&[]).unwrap_err().contains("empty"));
        assert!(
            split_frame(&[1, 0, 0, 0, 1])
                .unwrap_err()
                .contains("magic byte")
        );
        assert!(
            split_frame(&[0, 0, 1])
                .unwrap_err()
                .contains("truncated Confluent header")
        );
    }
}
