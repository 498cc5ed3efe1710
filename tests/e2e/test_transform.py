"""`transform`: computed columns and a `where` filter over the records, on
Apache Kafka, read back by DuckDB's delta extension and checked against a
Python oracle of the same expressions over the same records."""

import datetime
import json
import os
import subprocess

import pyarrow as pa
import pytest

from conftest import ROOT, confluent, duck, run_spec, write_spec
from test_exactly_once import verify

PAYMENT = {"type": "record", "name": "Payment", "namespace": "example.transform", "fields": [
    {"name": "payment_id", "type": "long"},
    {"name": "merchant", "type": "string"},
    {"name": "amount_cents", "type": "int"},
    {"name": "note", "type": ["null", "string"], "default": None},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
]}
FIXTURES = ROOT / "tests/fixtures/specs"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MERCHANTS = ["casino-royal", "grocer", "test-shop", "books", "casino-luck"]


def payment(n):
    return {"payment_id": n, "merchant": MERCHANTS[n % 5], "amount_cents": (n * 7919) % 500_000,
            "note": None if n % 3 else ("ignore me" if n % 9 == 0 else "ok"),
            "ts": START_MS + n * 37_000}  # about 31 hours over 3,000 records


def oracle(p):
    """What the spec's transform makes of a record; None when `where` drops it."""
    if p["merchant"] == "test-shop" or "ignore" in (p["note"] or ""):
        return None
    ts = datetime.datetime.fromtimestamp(p["ts"] / 1000, datetime.timezone.utc)
    cents = p["amount_cents"]
    size = "large" if cents >= 400_000 else "medium" if cents >= 100_000 else "small"
    suspicious = cents > 450_000 or (p["merchant"].startswith("casino") and ts.hour < 6)
    return {"payment_id": p["payment_id"], "amount_eur": cents / 100.0 * 0.92, "size": size,
            "day": ts.date(), "suspicious": suspicious, "note_length": None if p["note"] is None else len(p["note"])}


TRANSFORM = """transform:
  columns:
    amount_eur: "amount_cents / 100.0 * 0.92"
    size: "CASE WHEN amount_cents >= 400000 THEN 'large' WHEN amount_cents >= 100000 THEN 'medium' ELSE 'small' END"
    day: "date(ts)"
    suspicious: "amount_cents > 450000 OR (merchant LIKE 'casino%' AND hour(ts) < 6)"
    note_length: "length(note)"
  where: "merchant <> 'test-shop' AND coalesce(note, '') NOT LIKE '%ignore%'"
"""


@pytest.mark.parametrize("dev_stack", [["payments:3"]], indirect=True)
def test_computed_columns_and_filter_match_the_oracle(binary, dev_stack, tmp_path):
    schema_id = dev_stack.register("payments-value", PAYMENT)
    records = [payment(n) for n in range(3000)]
    dev_stack.produce("payments", [(None, confluent(schema_id, PAYMENT, r), None) for r in records])
    table = tmp_path / "lake" / "payments"
    spec = write_spec(tmp_path / "payments.yaml", pipeline="payments", bootstrap=dev_stack.bootstrap,
                      topic="payments", registry=dev_stack.registry, table=table,
                      checkpoint=tmp_path / "ckpt", partition_by=["size"], extra=TRANSFORM)
    text = spec.read_text().replace("  available_now: true", "  available_now: true\n  max_offsets_per_trigger: 700")
    spec.write_text(text)
    env = dict(os.environ, SCHEMA_REGISTRY_URL=dev_stack.registry)

    checked = subprocess.run([binary, "validate", str(spec)], capture_output=True, text=True,
                                           timeout=60, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    progress = tmp_path / "progress.jsonl"
    result = run_spec(binary, spec, extra=("--progress-json", str(progress)))
    assert result.returncode == 0, result.stderr[-3000:]

    expected = {o["payment_id"]: o for o in map(oracle, records) if o is not None}
    rows = duck().execute(
        f"SELECT payment_id, amount_eur, size, day, suspicious, note_length FROM delta_scan('{table}')"
    ).fetchall()
    assert len(rows) == len(expected), (len(rows), len(expected))
    got = {r[0]: r for r in rows}
    assert got.keys() == expected.keys()
    for payment_id, (_, amount_eur, size, day, suspicious, note_length) in got.items():
        want = expected[payment_id]
        assert abs(amount_eur - want["amount_eur"]) < 1e-9, (payment_id, amount_eur, want)
        assert (size, day, suspicious, note_length) == (want["size"], want["day"], want["suspicious"],
                                                        want["note_length"]), (payment_id, want)
    # Both kinds of rows exist, so the oracle's branches were all exercised.
    assert {w["size"] for w in expected.values()} == {"small", "medium", "large"}
    assert {w["suspicious"] for w in expected.values()} == {True, False}

    # The computed partition column partitions the files.
    assert sorted(p.name for p in table.iterdir() if p.is_dir() and p.name.startswith("size=")) == [
        "size=large", "size=medium", "size=small"]

    # What `where` dropped is counted, never silently lost.
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    assert len(events) >= 4, "several batches"
    assert sum(e["numFilteredRows"] for e in events) == len(records) - len(expected)
    assert sum(e["numInputRows"] for e in events) == len(records)
    report = verify(spec, env={"SCHEMA_REGISTRY_URL": dev_stack.registry})
    assert report["groups"][0]["rows"] == len(expected)


def test_transform_problems_are_found_against_the_registry(binary, dev_stack):
    """Type errors, unknown columns and bad constants, each at its line."""
    dev_stack.register("payments-value", PAYMENT)
    spec = FIXTURES / "registry_transform_types.yaml"
    env = dict(os.environ, SCHEMA_REGISTRY_URL=dev_stack.registry)
    result = subprocess.run([binary, "validate", str(spec)], capture_output=True, text=True,
                                          timeout=60, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    expected = (FIXTURES / "registry_transform_types.expected").read_text()
    assert result.stdout.splitlines() == expected.replace("{file}", str(spec)).splitlines()


@pytest.mark.parametrize("dev_stack", [["payments:2"]], indirect=True)
def test_windows_group_and_sum_computed_columns(binary, dev_stack, tmp_path):
    """The event-time operators see the transformed records: a window
    grouped by a computed column, summing another, over the filtered rows."""
    schema_id = dev_stack.register("payments-value", PAYMENT)
    records = [payment(n) for n in range(2000)]
    dev_stack.produce("payments", [(None, confluent(schema_id, PAYMENT, r), None) for r in records])
    table = tmp_path / "lake" / "sizes"
    spec = write_spec(tmp_path / "sizes.yaml", pipeline="sizes", bootstrap=dev_stack.bootstrap, topic="payments",
                      registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt",
                      extra=TRANSFORM + """event_time: {column: ts, watermark_delay: 2d}
window: {tumbling: {size: 1h}}
group_by: [size]
aggregations:
  - {name: payments, function: count}
  - {name: eur, function: sum, column: amount_eur}
  - {name: suspicious, function: count_distinct, column: payment_id}
output_mode: update
""")
    text = spec.read_text().replace("  available_now: true", "  available_now: true\n  max_offsets_per_trigger: 500")
    text = text.replace("checkpoint:\n", f"checkpoint:\n  state_dir: '{tmp_path / 'state'}'\n")
    spec.write_text(text)
    result = run_spec(binary, spec)
    assert result.returncode == 0, result.stderr[-3000:]

    expected = {}
    for r in records:
        o = oracle(r)
        if o is None:
            continue
        hour = r["ts"] // 3_600_000 * 3_600_000
        count, eur, ids = expected.get((hour, o["size"]), (0, 0.0, set()))
        expected[(hour, o["size"])] = (count + 1, eur + o["amount_eur"], ids | {o["payment_id"]})
    rows = duck().execute(
        f"SELECT epoch_ms(window_start), size, payments, eur, suspicious FROM delta_scan('{table}')").fetchall()
    got = {(start, size): (n, eur, d) for start, size, n, eur, d in rows}
    assert got.keys() == expected.keys()
    for key, (count, eur, ids) in expected.items():
        n, total, distinct = got[key]
        assert (n, distinct) == (count, len(ids)), key
        assert abs(total - eur) < 1e-6, (key, total, eur)


SELECT = ("SELECT payment_id AS id, upper(size) AS size, amount_eur * 100 AS eur_cents, "
          "* EXCLUDE (payment_id, size, amount_eur, note) FROM batch WHERE NOT suspicious AND amount_cents >= 1000")


@pytest.mark.parametrize("dev_stack", [["payments:2"]], indirect=True)
def test_a_select_shapes_the_table_as_duckdb_runs_it(binary, dev_stack, tmp_path):
    """`transform.sql` after the columns and `where`: the table is what
    DuckDB's own run of the same SELECT gives over the transformed rows."""
    schema_id = dev_stack.register("payments-value", PAYMENT)
    records = [payment(n) for n in range(1500)]
    dev_stack.produce("payments", [(None, confluent(schema_id, PAYMENT, r), None) for r in records])
    table = tmp_path / "lake" / "selected"
    spec = write_spec(tmp_path / "selected.yaml", pipeline="selected", bootstrap=dev_stack.bootstrap,
                      topic="payments", registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt",
                      extra=TRANSFORM + f"  sql: \"{SELECT}\"\n")
    env = dict(os.environ, SCHEMA_REGISTRY_URL=dev_stack.registry)
    checked = subprocess.run([binary, "validate", str(spec)], capture_output=True, text=True, timeout=60, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    progress = tmp_path / "progress.jsonl"
    result = run_spec(binary, spec, extra=("--progress-json", str(progress)))
    assert result.returncode == 0, result.stderr[-3000:]

    # The rows the SELECT reads: the records with the computed columns, after `where`.
    con = duck()
    transformed = [dict(r, **{k: v for k, v in o.items() if k != "payment_id"})
                   for r, o in zip(records, map(oracle, records)) if o is not None]
    batch = pa.Table.from_pylist([dict(r, ts=datetime.datetime.fromtimestamp(r["ts"] / 1000, datetime.timezone.utc))
                                  for r in transformed])
    con.register("batch", batch)
    # Timestamps compared as epoch milliseconds (a TIMESTAMPTZ in Python needs pytz).
    want = con.execute(f"SELECT * REPLACE (epoch_ms(ts) AS ts) FROM ({SELECT})")
    want_columns = [d[0] for d in want.description]
    want_rows = sorted(want.fetchall())
    got = con.execute(f"SELECT * REPLACE (epoch_ms(ts) AS ts) FROM delta_scan('{table}')")
    assert [d[0] for d in got.description] == want_columns
    assert want_columns[:4] == ["id", "size", "eur_cents", "merchant"]
    got_rows = sorted(got.fetchall())
    assert len(got_rows) == len(want_rows) and 0 < len(want_rows) < len(transformed)
    for g, w in zip(got_rows, want_rows):
        assert g[0] == w[0] and abs(g[2] - w[2]) < 1e-6 and g[:2] + g[3:] == w[:2] + w[3:], (g, w)
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    assert sum(e["numFilteredRows"] for e in events) == len(records) - len(want_rows)
    verify(spec, env={"SCHEMA_REGISTRY_URL": dev_stack.registry})

    # Before the operators, a SELECT naming only its columns: the Kafka
    # positions and timestamp dedup reads are kept for it, out of the table.
    deduped = tmp_path / "lake" / "deduped"
    stateful = write_spec(tmp_path / "deduped.yaml", pipeline="deduped", bootstrap=dev_stack.bootstrap,
                          topic="payments", registry=dev_stack.registry, table=deduped,
                          checkpoint=tmp_path / "ckpt-deduped",
                          extra=TRANSFORM + """  sql: "SELECT payment_id AS id, amount_eur FROM batch"
event_time: {watermark_delay: 1h}
dedup: {keys: [id]}
""")
    stateful.write_text(stateful.read_text().replace(
        "checkpoint:\n", f"checkpoint:\n  state_dir: '{tmp_path / 'state'}'\n"))
    result = run_spec(binary, stateful)
    assert result.returncode == 0, result.stderr[-3000:]
    got = con.execute(f"SELECT * FROM delta_scan('{deduped}')")
    assert [d[0] for d in got.description] == ["id", "amount_eur"]
    assert sorted(r[0] for r in got.fetchall()) == sorted(r["payment_id"] for r in transformed)

    # A SELECT that reads what the rows lack, or asks what a batch cannot
    # answer, is refused at its line.
    for sql, message in [("SELECT nope FROM batch", 'transform.sql: unknown column "nope"'),
                         ("SELECT merchant, count(*) AS n FROM batch GROUP BY merchant",
                          "transform.sql: GROUP BY over a batch depends on how the stream is cut")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(spec.read_text().replace(SELECT, sql))
        line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if text.strip().startswith("sql:"))
        out = subprocess.run([binary, "validate", str(bad)], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"{bad}:{line}: {message}" in out.stdout, out.stdout + out.stderr
