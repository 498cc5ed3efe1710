//! Realistic click streams, Avro-encoded by hand (the binary encoding is
//! simple and this keeps the generator fast enough to feed benchmarks):
//! out-of-order timestamps, late events and duplicates included.

use std::collections::VecDeque;

/// Schema of the demo's click events.
pub const CLICK_SCHEMA: &str = r#"{"type":"record","name":"Click","namespace":"tributary.demo","fields":[
  {"name":"event_id","type":{"type":"string","logicalType":"uuid"}},
  {"name":"user_id","type":"long"},
  {"name":"url","type":"string"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"device","type":{"type":"enum","name":"Device","symbols":["desktop","mobile","tablet"]}},
  {"name":"referrer","type":["null","string"],"default":null}
]}"#;

/// A 10-field record for benchmarks.
pub const BENCH_SCHEMA: &str = r#"{"type":"record","name":"Event","namespace":"tributary.bench","fields":[
  {"name":"event_id","type":{"type":"string","logicalType":"uuid"}},
  {"name":"user_id","type":"long"},
  {"name":"session_id","type":"long"},
  {"name":"url","type":"string"},
  {"name":"referrer","type":["null","string"],"default":null},
  {"name":"device","type":{"type":"enum","name":"Device","symbols":["desktop","mobile","tablet"]}},
  {"name":"country","type":"string"},
  {"name":"duration_ms","type":"int"},
  {"name":"amount","type":"double"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}}
]}"#;

const URLS: &[&str] = &[
    "/",
    "/pricing",
    "/docs",
    "/docs/quickstart",
    "/blog/streaming-lakehouse",
    "/signup",
    "/login",
    "/product/42",
    "/product/7",
    "/cart",
    "/checkout",
    "/search?q=delta",
];
const REFERRERS: &[&str] = &[
    "https://news.example.com/",
    "https://search.example.org/?q=lakehouse",
    "https://social.example.net/post/1",
];
const COUNTRIES: &[&str] = &["DE", "FR", "US", "BR", "JP", "IN", "NG", "GB"];

/// xorshift64*: deterministic per seed, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn put_long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_long(buf, s.len() as i64);
    buf.extend_from_slice(s.as_bytes());
}

fn put_uuid(buf: &mut Vec<u8>, rng: &mut Rng) {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    let s = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    );
    put_str(buf, &s);
}

/// Prefixes an Avro body with the Confluent header (magic byte, schema id).
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// What the generator emitted, to check a table against.
#[derive(Debug, Default, Clone, Copy)]
pub struct Emitted {
    pub events: u64,
    pub duplicates: u64,
    pub late: u64,
}

pub struct ClickStream {
    rng: Rng,
    recent: VecDeque<Vec<u8>>,
    pub emitted: Emitted,
}

impl ClickStream {
    pub fn new(seed: u64) -> ClickStream {
        ClickStream {
            rng: Rng::new(seed),
            recent: VecDeque::new(),
            emitted: Emitted::default(),
        }
    }

    /// The Avro body of the next click at wall-clock `now_ms`: usually a few
    /// seconds out of order, sometimes minutes late, sometimes a duplicate
    /// of a recent event (same bytes, as a retrying producer sends).
    pub fn next(&mut self, now_ms: i64) -> Vec<u8> {
        self.emitted.events += 1;
        if !self.recent.is_empty() && self.rng.chance(2) {
            self.emitted.duplicates += 1;
            let i = self.rng.below(self.recent.len() as u64) as usize;
            return self.recent[i].clone();
        }
        let r = &mut self.rng;
        let mut b = Vec::with_capacity(96);
        put_uuid(&mut b, r);
        put_long(&mut b, 1000 + r.below(5000) as i64);
        put_str(&mut b, URLS[r.below(URLS.len() as u64) as usize]);
        let late = r.chance(3);
        let ts = if late {
            now_ms - 60_000 - r.below(540_000) as i64
        } else {
            now_ms - r.below(3_000) as i64
        };
        if late {
            self.emitted.late += 1;
        }
        put_long(&mut b, ts);
        put_long(&mut b, r.below(3) as i64);
        if r.chance(40) {
            put_long(&mut b, 1);
            put_str(&mut b, REFERRERS[r.below(REFERRERS.len() as u64) as usize]);
        } else {
            put_long(&mut b, 0);
        }
        if self.recent.len() >= 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(b.clone());
        b
    }
}

/// The Avro body of one 10-field benchmark event.
pub fn bench_event(rng: &mut Rng, seq: u64, buf: &mut Vec<u8>) {
    buf.clear();
    put_uuid(buf, rng);
    put_long(buf, (seq % 100_000) as i64);
    put_long(buf, (seq / 20) as i64);
    put_str(buf, URLS[rng.below(URLS.len() as u64) as usize]);
    if rng.chance(40) {
        put_long(buf, 1);
        put_str(buf, REFERRERS[rng.below(REFERRERS.len() as u64) as usize]);
    } else {
        put_long(buf, 0);
    }
    put_long(buf, rng.below(3) as i64);
    put_str(buf, COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize]);
    put_long(buf, rng.below(60_000) as i64);
    buf.extend_from_slice(&((rng.below(100_000) as f64) / 100.0).to_le_bytes());
    put_long(buf, 1_767_225_600_000_000 + seq as i64 * 1000);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_matches_the_avro_spec() {
        let enc = |v| {
            let mut b = Vec::new();
            put_long(&mut b, v);
            b
        };
        assert_eq!(enc(0), vec![0]);
        assert_eq!(enc(-1), vec![1]);
        assert_eq!(enc(1), vec![2]);
        assert_eq!(enc(-64), vec![0x7f]);
        assert_eq!(enc(64), vec![0x80, 0x01]);
    }
}
