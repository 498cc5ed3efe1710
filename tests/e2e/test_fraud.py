"""The fraud-scoring example (table-specs/fraud/fraud-scoring.yaml) end to
end on Apache Kafka: transactions with planted fraud patterns, a risk-tier
dimension written by Python `deltalake`, the pipeline SIGKILLed again and
again while it scores and republishes. The table is checked against a Python
oracle of the documented rules and against DuckDB's own window functions;
the alerts against the oracle, read by a `read_committed` consumer."""

import json
import os
import random
import signal
import subprocess
import time

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from conftest import ROOT, confluent, duck
from test_event_time import env_for as event_time_env
from test_exactly_once import log_of, row_count, start, verify, wait_until
from test_republish import read_alerts

SPEC = ROOT / "table-specs/fraud/fraud-scoring.yaml"
SCHEMA = json.loads((ROOT / "table-specs/fraud/transactions.avsc").read_text())
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in ms
CARDS = 400
RANGE_MS = 600_000
PLANTED = 1_000_000  # planted transactions' ids start here


def tier_of(card):
    """Cards 380.. have no tier: the left join leaves NULL."""
    n = int(card[1:])
    return None if n >= 380 else ("high", "medium", "low")[n % 3]


def transactions():
    """Normal traffic: one transaction a second, cards in turn (each card
    every 400 s, at one of its two usual merchants), every 97th sent twice.
    Planted: bursts (7 transactions on one card within 70 s) and merchant
    sprees (5 merchants within 100 s). Returns the transactions in send
    order and the patterns as (card, start time)."""
    rng = random.Random(20261202)
    events = []
    for i in range(4000):
        card = f"c{i % CARDS:03d}"
        merchant = f"m{(i % CARDS + i // CARDS % 2) % 50:02d}"
        tx = {"tx_id": i, "card_id": card, "merchant_id": merchant,
              "amount_cents": 500 + rng.randrange(20_000), "ts": T0 + i * 1000}
        events.append(tx)
        if i % 97 == 0:
            events.append(dict(tx))  # a producer retry: the same transaction again
    planted, patterns = PLANTED, []
    for k, start in enumerate(range(300, 3900, 300)):
        card = f"c{(start * 7 + k) % CARDS:03d}"
        patterns.append((card, T0 + start * 1000))
        for j in range(7 if k % 2 == 0 else 5):
            merchant = f"m{(start // 100) % 50:02d}" if k % 2 == 0 else f"x{k:02d}{j}"
            events.append({"tx_id": planted, "card_id": card, "merchant_id": merchant,
                           "amount_cents": 9_000 + j, "ts": T0 + start * 1000 + j * 10_000 + 500})
            planted += 1
    events.sort(key=lambda e: e["ts"])  # stable: a retry stays behind its original
    return events, patterns


def oracle(events):
    """The documented rules by brute force: the first of each tx_id; its
    card's transactions read before it (and itself) within [ts - 10m, ts];
    the spec's expressions."""
    seen, history, out = set(), {}, {}
    for e in events:
        if e["tx_id"] in seen:
            continue
        seen.add(e["tx_id"])
        rows = history.setdefault(e["card_id"], [])
        rows.append(e)
        frame = [r for r in rows if e["ts"] - RANGE_MS <= r["ts"] <= e["ts"]]
        count, amount = len(frame), sum(r["amount_cents"] for r in frame)
        merchants = len({r["merchant_id"] for r in frame})
        tier = tier_of(e["card_id"])
        weight = {"high": 2.0, "low": 1.0}.get(tier, 1.5)
        score = weight * (count + 2 * merchants + amount / 100000)
        out[e["tx_id"]] = {"risk_tier": tier, "tx_count_10m": count, "amount_10m": amount,
                           "merchants_10m": merchants, "risk_score": score,
                           "is_suspicious": count >= 6 or merchants >= 4 or score >= 30}
    return out


def env_for(stack, tmp_path):
    """The example specs' variables, 300 records a trigger. The fraud spec
    has no `available_now` variable: it runs continuously, as its republish
    sink runs inside `tributary run` only then."""
    return event_time_env(stack, tmp_path, 300)


@pytest.mark.parametrize("dev_stack", [["transactions:4", "fraud-alerts:1"]], indirect=True)
def test_fraud_scoring_survives_kills_and_alerts_exactly_the_planted_fraud(binary, dev_stack, tmp_path):
    events, patterns = transactions()
    expected = oracle(events)
    suspicious = {tx for tx, row in expected.items() if row["is_suspicious"]}
    # The rules flag what was planted: every pattern trips them, and besides
    # planted transactions they flag only its card's next ones within 10
    # minutes (whose window still holds the pattern).
    by_id = {e["tx_id"]: e for e in events}
    for card, _ in patterns:
        assert any(by_id[tx]["card_id"] == card and tx >= PLANTED for tx in suspicious), card
    for tx in suspicious:
        e = by_id[tx]
        assert tx >= PLANTED or any(card == e["card_id"] and begin <= e["ts"] <= begin + 100_000 + RANGE_MS
                                    for card, begin in patterns), e

    tiers = {f"c{n:03d}": tier_of(f"c{n:03d}") for n in range(CARDS) if tier_of(f"c{n:03d}")}
    write_deltalake(str(tmp_path / "lake" / "card_risk_tiers"),
                    pa.table({"card_id": list(tiers), "risk_tier": list(tiers.values())}))
    schema_id = dev_stack.register("transactions-value", SCHEMA)
    dev_stack.produce("transactions", [(e["card_id"].encode(), confluent(schema_id, SCHEMA, e), None) for e in events])

    spec = tmp_path / "fraud-scoring.yaml"
    spec.write_text(SPEC.read_text())
    env = env_for(dev_stack, tmp_path)
    table = tmp_path / "lake" / "scored_transactions"
    rng = random.Random(7)
    for kill in range(8):
        proc = start(binary, spec, env=env)
        time.sleep(rng.uniform(1.0, 3.0))
        assert proc.poll() is None, log_of(proc)[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = start(binary, spec, env=env)
    try:
        wait_until(lambda: row_count(table) == len(expected), 180, "every transaction to land")
        alerts = read_alerts(dev_stack, expected=len(suspicious), topic="fraud-alerts")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_of(proc)[-3000:]

    # The table: every transaction once, with its tier, features and score.
    rows = duck().execute(f"""
        SELECT tx_id, risk_tier, tx_count_10m, amount_10m, merchants_10m, risk_score, is_suspicious,
               count(*) OVER (PARTITION BY card_id ORDER BY ts
                              RANGE BETWEEN INTERVAL 10 MINUTES PRECEDING AND CURRENT ROW),
               sum(amount_cents) OVER (PARTITION BY card_id ORDER BY ts
                              RANGE BETWEEN INTERVAL 10 MINUTES PRECEDING AND CURRENT ROW),
               "date", CAST(ts AS DATE)
        FROM delta_scan('{table}')""").fetchall()
    assert sorted(r[0] for r in rows) == sorted(expected), "each transaction exactly once"
    for tx, tier, count, amount, merchants, score, flagged, sql_count, sql_amount, day, ts_day in rows:
        want = expected[tx]
        got = {"risk_tier": tier, "tx_count_10m": count, "amount_10m": amount, "merchants_10m": merchants,
               "risk_score": score, "is_suspicious": flagged}
        assert got == pytest.approx(want), tx
        # Each card's transactions arrive in event-time order with distinct
        # times, so the streaming features equal SQL's RANGE window.
        assert (count, amount) == (sql_count, sql_amount), tx
        assert day == ts_day
    report = verify(spec, env=env)
    assert sum(end - start for g in report["groups"] for ranges in g["offsets"].values()
               for start, end in ranges) == len(events), "verify accounts for every offset, retries included"

    # The alerts: exactly the suspicious transactions, once each, committed.
    ids = [a["tx_id"] for _, a in alerts]
    assert len(ids) == len(set(ids)), "duplicated alerts"
    assert set(ids) == suspicious
    for key, alert in alerts:
        assert key == alert["card_id"].encode()
        assert alert["tx_count_10m"] == expected[alert["tx_id"]]["tx_count_10m"]


@pytest.mark.parametrize("dev_stack", [["transactions:1"]], indirect=True)
def test_validate_types_the_feature_columns_the_score_reads(binary, dev_stack, tmp_path):
    write_deltalake(str(tmp_path / "lake" / "card_risk_tiers"), pa.table({"card_id": ["c1"], "risk_tier": ["low"]}))
    dev_stack.register("transactions-value", SCHEMA)
    env = dict(os.environ, **env_for(dev_stack, tmp_path))
    spec = tmp_path / "fraud-scoring.yaml"
    spec.write_text(SPEC.read_text())
    ok = subprocess.run([binary, "validate", str(spec)], capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{spec}: ok", ok.stdout + ok.stderr
    # A feature is a long: comparing it with text is a type error, found
    # before the pipeline runs, at the line that says it.
    text = SPEC.read_text().replace("tx_count_10m >= 6 OR", "tx_count_10m >= 'many' OR")
    spec.write_text(text)
    bad = subprocess.run([binary, "validate", str(spec)], capture_output=True, text=True, timeout=60, env=env)
    line = next(n for n, l in enumerate(text.splitlines(), 1) if "'many'" in l)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stdout.splitlines() == [
        f"{spec}:{line}: transform.columns.is_suspicious: cannot compare an integer with a string"]
