//! Card transactions with planted fraud, for `demo --scenario fraud` and
//! `bench fraud`: normal cards pay now and then at one of their two usual
//! merchants; now and then a card bursts (7 payments at one merchant in a
//! row) or goes on a spree (5 merchants in a row). The fraud-scoring
//! example's rules flag the patterns and, with the cards spread as here,
//! nothing of the normal traffic.

use std::collections::{HashSet, VecDeque};

use crate::generator::{Rng, put_long, put_str};

/// The example's transaction schema (table-specs/fraud/transactions.avsc).
pub const TRANSACTION_SCHEMA: &str = include_str!("../../../table-specs/fraud/transactions.avsc");

/// Tiers of the example's risk-tier dimension; cards past the last tiered
/// one have none.
pub const TIERS: [&str; 3] = ["high", "medium", "low"];

/// One transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub tx_id: i64,
    pub card_id: String,
    pub merchant_id: String,
    pub amount_cents: i64,
    pub ts_ms: i64,
}

impl Transaction {
    /// The Avro body (without the Confluent header).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        put_long(buf, self.tx_id);
        put_str(buf, &self.card_id);
        put_str(buf, &self.merchant_id);
        put_long(buf, self.amount_cents);
        put_long(buf, self.ts_ms);
    }
}

/// The name of card `n`.
pub fn card_name(n: u64) -> String {
    format!("c{n:07}")
}

/// The risk tier of card `n` of `cards`: one in 20 has none.
pub fn tier_of(n: u64, cards: u64) -> Option<&'static str> {
    (n < cards - cards / 20).then(|| TIERS[(n % 3) as usize])
}

/// What was planted, to check the alerts against.
#[derive(Debug, Default, Clone)]
pub struct Planted {
    pub bursts: u64,
    pub sprees: u64,
    /// The planted transactions' ids.
    pub ids: HashSet<i64>,
    /// Each pattern's transaction ids.
    pub patterns: Vec<Vec<i64>>,
}

/// An endless stream of transactions over `cards` cards, taken in turn so
/// that a card pays at most once per `cards` transactions; one pattern is
/// planted every `pattern_every` transactions.
pub struct TransactionStream {
    rng: Rng,
    cards: u64,
    pattern_every: u64,
    seq: u64,
    queued: VecDeque<(String, String, i64)>,
    pub planted: Planted,
}

impl TransactionStream {
    pub fn new(seed: u64, cards: u64, pattern_every: u64) -> TransactionStream {
        TransactionStream {
            rng: Rng::new(seed),
            cards: cards.max(100),
            pattern_every: pattern_every.max(20),
            seq: 0,
            queued: VecDeque::new(),
            planted: Planted::default(),
        }
    }

    /// The next transaction, at event time `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> Transaction {
        let tx_id = self.seq as i64;
        self.seq += 1;
        if self.seq.is_multiple_of(self.pattern_every) {
            self.plant();
        }
        if let Some((card_id, merchant_id, amount_cents)) = self.queued.pop_front() {
            self.planted.ids.insert(tx_id);
            if let Some(p) = self.planted.patterns.last_mut() {
                p.push(tx_id);
            }
            return Transaction {
                tx_id,
                card_id,
                merchant_id,
                amount_cents,
                ts_ms: now_ms,
            };
        }
        let card = self.seq % self.cards;
        let usual = (card + self.seq / self.cards % 2) % 500;
        Transaction {
            tx_id,
            card_id: card_name(card),
            merchant_id: format!("m{usual:03}"),
            amount_cents: 500 + self.rng.below(20_000) as i64,
            ts_ms: now_ms,
        }
    }

    /// Queues a burst or a spree on a random card.
    fn plant(&mut self) {
        let card = card_name(self.rng.below(self.cards));
        let burst = self.planted.patterns.len().is_multiple_of(2);
        let n = self.planted.patterns.len();
        if burst {
            self.planted.bursts += 1;
            for _ in 0..7 {
                self.queued.push_back((
                    card.clone(),
                    "m999".into(),
                    9_000 + self.rng.below(900) as i64,
                ));
            }
        } else {
            self.planted.sprees += 1;
            for j in 0..5 {
                self.queued.push_back((
                    card.clone(),
                    format!("spree-{n}-{j}"),
                    2_000 + self.rng.below(900) as i64,
                ));
            }
        }
        self.planted.patterns.push(Vec::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_cards_pay_at_most_once_per_round_and_patterns_are_recorded() {
        let mut s = TransactionStream::new(1, 1000, 200);
        let txs: Vec<Transaction> = (0..3000).map(|i| s.next(i)).collect();
        let normal: Vec<&Transaction> = txs
            .iter()
            .filter(|t| !s.planted.ids.contains(&t.tx_id))
            .collect();
        for w in normal.windows(2) {
            assert_ne!(w[0].card_id, w[1].card_id);
        }
        assert_eq!(s.planted.patterns.len(), 15);
        assert_eq!(s.planted.bursts + s.planted.sprees, 15);
        // Every pattern but the one in flight is complete.
        for p in &s.planted.patterns[..14] {
            assert!(p.len() == 7 || p.len() == 5, "{p:?}");
        }
        let mut body = Vec::new();
        txs[0].encode(&mut body);
        assert!(!body.is_empty());
    }
}
