"""Avro of every supported type, encoded by fastavro, produced by confluent-kafka,
ingested by the real binary, read back by DuckDB and Python deltalake."""

import datetime as dt
import decimal
import json
import pathlib
import uuid

import pytest
from deltalake import DeltaTable

from conftest import ROOT, confluent, duck, read_ranges, run_spec, spark_ranges, write_spec

SCHEMA = json.loads((ROOT / "tests/fixtures/schemas/all_types.avsc").read_text())
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
N = 600


def record(n):
    ts = dt.datetime(2026, 3, 1, 22, 0, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=7 * n)
    return {
        "b": n % 2 == 0,
        "i": n * 3 - 900,
        "l": n,
        "f": n / 4.0,
        "d": n * 1.5e10,
        "s": f"str-{n}-ü€",
        "by": bytes([n % 256, 0, 255]),
        "opt": None if n % 3 == 0 else f"o{n}",
        "opt_long": None if n % 5 == 0 else n * 1000,
        "nested": {"x": n, "y": None if n % 2 else f"y{n}"},
        "arr": list(range(n % 4)),
        "m": {f"k{j}": j * n for j in range(n % 3)},
        "e": ["RED", "GREEN", "BLUE"][n % 3],
        "fx": bytes([1, 2, 3, n % 256]),
        "dec": decimal.Decimal(n * 37) / 100,
        "u": uuid.UUID(int=n * 7919 + 1),
        "dt": dt.date(2020, 1, 1) + dt.timedelta(days=n),
        "tms": dt.time(n % 24, n % 60, 1, 123000),
        "tus": dt.time(n % 24, 1, n % 60, 654321),
        "tsm": ts,
        "tsu": ts + dt.timedelta(microseconds=n),
        "ltsm": dt.datetime(2025, 12, 31, 23, 59, 59, 999000) + dt.timedelta(hours=n),
        "ltsu": dt.datetime(2025, 1, 1, 0, 0, 0, 1) + dt.timedelta(seconds=n),
        "region": ["eu", "us/west", "apac"][n % 3],
    }


def micros(d):
    return (d - EPOCH) // dt.timedelta(microseconds=1)


def naive_micros(d):
    return (d - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)


def time_micros(t):
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


@pytest.mark.parametrize("dev_stack", [["types:3"]], indirect=True)
def test_every_avro_type_lands_with_the_right_values_and_delta_types(binary, dev_stack, tmp_path):
    schema_id = dev_stack.register("types-value", SCHEMA)
    records = [record(n) for n in range(N)]
    dev_stack.produce("types", [(str(n).encode(), confluent(schema_id, SCHEMA, r), None) for n, r in enumerate(records)])

    table = tmp_path / "lake" / "types"
    spec = write_spec(
        tmp_path / "types.yaml", pipeline="types", bootstrap=dev_stack.bootstrap, topic="types",
        registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt", partition_by=["region", "date(tsm)"],
    )
    result = run_spec(binary, spec)
    assert result.returncode == 0, result.stderr
    assert_every_type_landed(table, records)


def assert_every_type_landed(table, records):
    """Every value and Delta type, read by DuckDB and Python deltalake."""
    con = duck()
    rows = con.execute(
        f"""select b, i, l, f, d, s, "by", opt, opt_long, nested.x, nested.y, arr, map_keys(m), map_values(m), e, fx,
                  dec::varchar, u, dt::varchar, tms, tus, epoch_us(tsm), epoch_us(tsu), epoch_us(ltsm), epoch_us(ltsu),
                  region, "date"::varchar
           from delta_scan('{table}') order by l"""
    ).fetchall()
    assert len(rows) == len(records)
    for n, row in enumerate(rows):
        r = records[n]
        expected = (
            r["b"], r["i"], n, r["f"], r["d"], r["s"], r["by"], r["opt"], r["opt_long"], r["nested"]["x"], r["nested"]["y"],
            r["arr"], list(r["m"].keys()), list(r["m"].values()), r["e"], r["fx"], f"{r['dec']:.2f}", str(r["u"]),
            r["dt"].isoformat(), time_micros(r["tms"]) // 1000, time_micros(r["tus"]), micros(r["tsm"]), micros(r["tsu"]),
            naive_micros(r["ltsm"]), naive_micros(r["ltsu"]), r["region"], r["tsm"].date().isoformat(),
        )
        assert row == expected, f"row {n}: {row} != {expected}"

    # Partition values: one directory per (region, date) pair, as Hive-style paths.
    files = con.execute(f"select filename from delta_scan('{table}', filename=true)").fetchall()
    assert all("/region=" in f[0] and "/date=" in f[0] for f in files)
    expected_partitions = {(r["region"], r["tsm"].date().isoformat()) for r in records}
    got = con.execute(f"""select distinct region, "date"::varchar from delta_scan('{table}')""").fetchall()
    assert set(got) == expected_partitions

    # A second reader, Python deltalake (delta-rs through PyArrow), and the Delta types.
    dt_table = DeltaTable(str(table))
    assert dt_table.metadata().partition_columns == ["region", "date"]
    arrow = dt_table.to_pyarrow_table()
    assert arrow.num_rows == len(records)
    assert sorted(arrow.column("l").to_pylist()) == list(range(len(records)))
    types = {f["name"]: f["type"] for f in json.loads(dt_table.schema().to_json())["fields"]}
    assert types["b"] == "boolean" and types["i"] == "integer" and types["l"] == "long"
    assert types["f"] == "float" and types["d"] == "double" and types["s"] == "string" and types["by"] == "binary"
    assert types["opt"] == "string" and types["opt_long"] == "long"
    assert types["nested"] == {"type": "struct", "fields": [
        {"name": "x", "type": "integer", "nullable": True, "metadata": {}},
        {"name": "y", "type": "string", "nullable": True, "metadata": {}}]}
    assert types["arr"] == {"type": "array", "elementType": "long", "containsNull": True}
    assert types["m"] == {"type": "map", "keyType": "string", "valueType": "integer", "valueContainsNull": True}
    assert types["e"] == "string" and types["fx"] == "binary" and types["dec"] == "decimal(10,2)"
    assert types["u"] == "string" and types["dt"] == "date"
    assert types["tms"] == "integer" and types["tus"] == "long"
    assert types["tsm"] == "timestamp" and types["tsu"] == "timestamp"
    assert types["ltsm"] == "timestamp_ntz" and types["ltsu"] == "timestamp_ntz"
    assert types["region"] == "string" and types["date"] == "date"


@pytest.mark.parametrize("dev_stack", [["clicks:4"]], indirect=True)
def test_example_spec_runs_and_commits_carry_the_batch_txn(binary, dev_stack, tmp_path):
    """table-specs/clicks.yaml, unchanged, with addresses from the environment."""
    click_schema = json.loads((ROOT / "tests/fixtures/schemas/click.avsc").read_text())
    schema_id = dev_stack.register("clicks-value", click_schema)
    base = dt.datetime(2026, 5, 4, 10, 0, tzinfo=dt.timezone.utc)
    clicks = [
        {"event_id": str(uuid.UUID(int=n + 1)), "user_id": n % 37, "url": f"/p/{n % 11}", "ts": base + dt.timedelta(seconds=n * 50),
         "device": ["desktop", "mobile", "tablet"][n % 3], "referrer": None if n % 2 else "https://r.example/"}
        for n in range(3000)
    ]
    dev_stack.produce("clicks", [(None, confluent(schema_id, click_schema, c), None) for c in clicks])
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": dev_stack.bootstrap,
        "SCHEMA_REGISTRY_URL": dev_stack.registry,
        "TRIBUTARY_LAKE": f"file://{tmp_path}/lake",
        "TRIBUTARY_CHECKPOINTS": f"file://{tmp_path}/checkpoints",
        "TRIBUTARY_AVAILABLE_NOW": "true",
        "TRIBUTARY_MAX_OFFSETS": "700",
    }
    progress = tmp_path / "progress.jsonl"
    result = run_spec(binary, ROOT / "table-specs/clicks.yaml", env=env, extra=("--progress-json", str(progress)))
    assert result.returncode == 0, result.stderr

    table = tmp_path / "lake" / "clicks"
    con = duck()
    got = con.execute(f"select event_id, url, epoch_ms(ts) from delta_scan('{table}') order by event_id").fetchall()
    want = sorted((c["event_id"], c["url"], int(c["ts"].timestamp() * 1000)) for c in clicks)
    assert got == want

    # max_offsets_per_trigger 700 over 3000 records: the batches Spark would
    # plan (about 5), each one commit carrying txn {appId: clicks/topic,
    # version: batch id} and its offsets.
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    planned = read_ranges(events, "clicks")
    assert planned == spark_ranges(events, "clicks", 700)
    batches = len(planned)
    assert 5 <= batches <= 6, planned
    assert [e["batchId"] for e in events] == list(range(batches))
    assert [e["numInputRows"] for e in events] == [sum(e - s for s, e in b.values()) for b in planned]
    assert sum(e["numInputRows"] for e in events) == 3000
    # Without event-time operators there are no operator steps to time.
    assert all({"operate", "stateApply"}.isdisjoint(e["durationMs"]) for e in events)
    assert all(e["durationMs"]["write"] <= e["durationMs"]["triggerExecution"] for e in events)
    # Lag counts down to nothing as the backlog drains.
    lags = [e["lag"] for e in events]
    assert lags == sorted(lags, reverse=True) and lags[-1] == 0, lags
    assert lags[0] == 3000 - events[0]["numInputRows"], lags
    log = sorted((table / "_delta_log").glob("*.json"))
    txns, infos = [], []
    for f in log:
        for line in f.read_text().splitlines():
            action = json.loads(line)
            if "txn" in action:
                txns.append((action["txn"]["appId"], action["txn"]["version"]))
            if "commitInfo" in action and "tributary" in action["commitInfo"]:
                infos.append(action["commitInfo"]["tributary"])
    assert txns == [("clicks/topic", n) for n in range(batches)]
    covered = sum(r["end"] - r["start"] for i in infos for r in i["ranges"])
    assert covered == 3000
    assert [i["batchId"] for i in infos] == list(range(batches))

    # Running again finds nothing new and writes nothing.
    again = run_spec(binary, ROOT / "table-specs/clicks.yaml", env=env)
    assert again.returncode == 0, again.stderr
    assert sorted((table / "_delta_log").glob("*.json")) == log
