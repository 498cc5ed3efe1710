"""Event time end to end: the example specs in table-specs/ (unique users per
minute, card activity over sliding windows in update mode, user sessions),
run by the real binary on out-of-order streams with duplicates and late
events, read back by DuckDB and Python deltalake, and compared with a plain
Python oracle of the rules in docs/event-time.md, applied to the batches the
run recorded. Then restarts at every step boundary and a wiped state
directory must give the same tables as an uninterrupted run."""

import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid

import boto3
import pytest
from deltalake import DeltaTable

from conftest import ROOT, confluent, duck, run_spec
from test_s3 import BUCKET, s3  # noqa: F401 (the moto S3 server fixture)

CLICK_SCHEMA = json.loads((ROOT / "tests/fixtures/schemas/click.avsc").read_text())
PAYMENT_SCHEMA = json.loads((ROOT / "table-specs/schemas/payments.avsc").read_text())
BASE = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
MINUTE = 60_000_000  # microseconds

# What each example spec computes, for the oracle: its topic, delay, dedup
# key, window, group key and aggregations (name, function, field).
EXAMPLES = {
    "users-per-minute": dict(
        topic="clicks", table="users_per_minute", delay=5 * MINUTE, dedup="event_id",
        window=("sliding", MINUTE, MINUTE), group=None, mode="append",
        aggs=[("unique_users", "count_distinct", "user_id"), ("clicks", "count", None)]),
    "card-activity": dict(
        topic="payments", table="card_activity", delay=15 * MINUTE, dedup="payment_id",
        window=("sliding", 10 * MINUTE, 2 * MINUTE), group="card_id", mode="update",
        aggs=[("payments", "count", None), ("amount", "sum", "amount"), ("merchants", "count_distinct", "merchant")]),
    "user-sessions": dict(
        topic="clicks", table="user_sessions", delay=10 * MINUTE, dedup=None,
        window=("session", 30 * MINUTE), group="user_id", mode="append",
        aggs=[("clicks", "count", None), ("pages", "count_distinct", "url"),
              ("landing_page", "first", "url"), ("exit_page", "last", "url")]),
}


def clicks(rng, n):
    """Clicks of 12 users: out of order by up to 3 minutes, 6% late by up to
    40 minutes, 6% duplicates, and quiet hours that close sessions."""
    clock = BASE
    out = []
    for i in range(n):
        clock += dt.timedelta(seconds=rng.randrange(0, 9))
        if i % 400 == 399:
            clock += dt.timedelta(minutes=50)
        if out and rng.random() < 0.06:
            out.append(dict(rng.choice(out)))
            continue
        skew = dt.timedelta(minutes=rng.uniform(0, 40)) if rng.random() < 0.06 else dt.timedelta(seconds=rng.randrange(0, 180))
        out.append({"event_id": str(uuid.UUID(int=i + 1)), "user_id": rng.randrange(12), "url": f"/p/{rng.randrange(7)}",
                    "ts": clock - skew, "device": "mobile", "referrer": None})
    return out


def payments(rng, n):
    clock = BASE
    out = []
    for i in range(n):
        clock += dt.timedelta(seconds=rng.randrange(0, 12))
        if out and rng.random() < 0.05:
            out.append(dict(rng.choice(out)))
            continue
        skew = dt.timedelta(minutes=rng.uniform(0, 45)) if rng.random() < 0.06 else dt.timedelta(seconds=rng.randrange(0, 300))
        out.append({"payment_id": f"pay{i}", "card_id": f"card{rng.randrange(15)}", "merchant": f"m{rng.randrange(9)}",
                    "amount": float(rng.randrange(1, 500)), "ts": clock - skew})
    return out


def millis(t):
    """A timestamp as timestamp-millis holds it."""
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)


def produce(stack, topic, records, partitions):
    schema = CLICK_SCHEMA if topic == "clicks" else PAYMENT_SCHEMA
    schema_id = stack.register(f"{topic}-value", schema)
    placed = stack.produce(topic, [(None, confluent(schema_id, schema, r), i % partitions)
                                   for i, r in enumerate(records)])
    return [dict(r, _p=p, _o=o, _t=millis(r["ts"]) * 1000) for r, (p, o) in zip(records, placed)]


def env_for(stack, tmp_path, max_offsets):
    return {
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "SCHEMA_REGISTRY_URL": stack.registry,
        "TRIBUTARY_LAKE": f"file://{tmp_path}/lake",
        "TRIBUTARY_CHECKPOINTS": f"file://{tmp_path}/checkpoints",
        "TRIBUTARY_STATE_DIR": str(tmp_path / "state"),
        "TRIBUTARY_AVAILABLE_NOW": "true",
        "TRIBUTARY_MAX_OFFSETS": str(max_offsets),
    }


def batches_of(progress, records):
    """The records of each batch, from the offset ranges the run reported."""
    events = sorted((json.loads(l) for l in progress.read_text().splitlines()), key=lambda e: e["batchId"])
    assert [e["batchId"] for e in events] == list(range(len(events)))
    out = []
    for e in events:
        (start,), (end,) = e["sources"][0]["startOffset"].values(), e["sources"][0]["endOffset"].values()
        out.append(sorted((r for r in records if start.get(str(r["_p"]), 0) <= r["_o"] < end.get(str(r["_p"]), 0)
                           and str(r["_p"]) in start), key=lambda r: (r["_p"], r["_o"])))
    assert sum(len(b) for b in out) == len(records), "the batches cover every record once"
    return out


def aggregate(aggs, rows):
    """One window's aggregates; rows are (batch, record)."""
    out = []
    order = lambda br: (br[1]["_t"], br[0], br[1]["_p"], br[1]["_o"])
    for _, function, field in aggs:
        values = [r[field] for _, r in rows] if field else None
        if function == "count":
            out.append(len(rows) if field is None else sum(v is not None for v in values))
        elif function == "count_distinct":
            out.append(len({v for v in values if v is not None}))
        elif function == "sum":
            out.append(sum(values))
        elif function == "first":
            out.append(min(rows, key=order)[1][field])
        elif function == "last":
            out.append(max(rows, key=order)[1][field])
    return out


def watermark(max_seen, delay):
    """Spark's: the greatest event time in whole milliseconds, less the delay."""
    return None if max_seen is None else max_seen // 1000 * 1000 - delay


def oracle(example, batches):
    """The documented rules, applied by brute force. Returns the table's
    rows (window_start, window_end, [group], aggregates...) and the late rows."""
    delay, window, group = example["delay"], example["window"], example["group"]
    max_seen, last_wm, dedup, late = None, None, {}, []
    windows, open_rows, emitted = {}, {}, {}

    def last_end(t):
        """When the last state a row at t would update closes."""
        if example["dedup"]:
            return t
        if window[0] == "sliding":
            return t // window[2] * window[2] + window[1]
        return t + window[1]

    for b, records in enumerate(batches):
        # Rows are late against the previous batch's watermark; windows
        # close with this batch's.
        w, lw = watermark(max_seen, delay), last_wm
        on_time = [r for r in records if lw is None or last_end(r["_t"]) > lw]
        late += [r for r in records if not (lw is None or last_end(r["_t"]) > lw)]
        kept = on_time
        if example["dedup"]:
            if lw is not None:
                dedup = {k: e for k, e in dedup.items() if e > lw}
            kept = []
            for r in on_time:
                if r[example["dedup"]] not in dedup:
                    dedup[r[example["dedup"]]] = r["_t"] + delay
                    kept.append(r)
        g = (lambda r: (r[group],)) if group else (lambda r: ())
        if window[0] == "sliding":
            _, size, slide = window
            touched = set()
            for r in kept:
                start = (r["_t"] - size) // slide * slide
                while start <= r["_t"]:
                    if start <= r["_t"] < start + size and (lw is None or start + size > lw):
                        key = (start, start + size) + g(r)
                        windows.setdefault(key, []).append((b, r))
                        touched.add(key)
                    start += slide
            if example["mode"] == "update":
                for key in touched:
                    emitted[key] = aggregate(example["aggs"], windows[key])
            if w is not None:
                for key in [k for k in windows if k[1] <= w]:
                    rows = windows.pop(key)
                    if example["mode"] == "append":
                        emitted[key] = aggregate(example["aggs"], rows)
        else:
            gap = window[1]
            for r in kept:
                open_rows.setdefault(g(r), []).append((b, r))
            if w is not None:
                for gk, rows in open_rows.items():
                    left, sessions = [], []
                    for br in sorted(rows, key=lambda br: br[1]["_t"]):
                        t = br[1]["_t"]
                        # A row at or before the session's end joins it (Spark).
                        if sessions and t <= sessions[-1][1]:
                            sessions[-1][1] = max(sessions[-1][1], t + gap)
                            sessions[-1][2].append(br)
                        else:
                            sessions.append([t, t + gap, [br]])
                    for start, end, members in sessions:
                        if end <= w:
                            emitted[(start, end) + gk] = aggregate(example["aggs"], members)
                        else:
                            left += members
                    open_rows[gk] = left
        ts = [r["_t"] for r in records]
        if ts:
            max_seen = max(ts) if max_seen is None else max(max_seen, *ts)
        last_wm = w if w is not None else last_wm
    return sorted(k + tuple(v) for k, v in emitted.items()), late


def table_rows(path, example):
    columns = ["epoch_us(window_start)", "epoch_us(window_end)"]
    if example["group"]:
        columns.append(example["group"])
    columns += [name for name, _, _ in example["aggs"]]
    rows = duck().execute(f"select {', '.join(columns)} from delta_scan('{path}') order by all").fetchall()
    return [tuple(float(v) if isinstance(v, float) else v for v in row) for row in rows]


@pytest.mark.parametrize("dev_stack", [["clicks:3", "payments:3"]], indirect=True)
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_specs_give_what_the_rules_say(binary, dev_stack, tmp_path, name):
    example = EXAMPLES[name]
    rng = random.Random(name)
    generate = clicks if example["topic"] == "clicks" else payments
    records = produce(dev_stack, example["topic"], generate(rng, 1500), partitions=3)
    progress = tmp_path / "progress.jsonl"
    result = run_spec(binary, ROOT / f"table-specs/{name}.yaml", env=env_for(dev_stack, tmp_path, 120),
                      extra=("--progress-json", str(progress)))
    assert result.returncode == 0, result.stderr[-3000:]
    # No batch needed a retry: each was read, operated and committed once.
    assert "batch failed" not in result.stderr, result.stderr[-3000:]

    batches = batches_of(progress, records)
    assert len(batches) >= 10
    want, late = oracle(example, batches)
    table = tmp_path / "lake" / example["table"]
    got = table_rows(table, example)
    assert len(want) > 20 and late, "the stream closes windows and has late rows"
    assert got == want

    events = [json.loads(l) for l in progress.read_text().splitlines()]
    assert sum(e["eventTime"]["numLateRows"] for e in events) == len(late)
    assert all(e["eventTime"]["watermark"] for e in events[1:])
    # The operators' steps are timed, as parts of the batch's write.
    for e in events:
        steps = e["durationMs"]
        assert steps["operate"] + steps["stateApply"] <= steps["write"], steps
    # A second reader agrees with DuckDB.
    dt_rows = DeltaTable(str(table)).to_pyarrow_table().num_rows
    assert dt_rows == len(want)
    # The table is complete through the last batch's watermark, which
    # `status` reports; an append-mode table holds only windows ending then
    # or earlier.
    status = subprocess.run([str(binary), "status", "--spec", str(ROOT / f"table-specs/{name}.yaml"), "--json"],
                            env=dict(os.environ, **env_for(dev_stack, tmp_path, 120)), capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    complete = json.loads(status.stdout)["table"]["completeThrough"]
    assert complete and complete == events[-1]["eventTime"]["watermark"], (complete, events[-1])
    if example["mode"] == "append":
        complete_us = millis(dt.datetime.fromisoformat(complete.replace("Z", "+00:00"))) * 1000
        assert max(row[1] for row in got) <= complete_us
    if name == "card-activity":
        # Update mode: each batch that changed windows is one MERGE commit
        # with the batch's txn; late payments are in their own table.
        history = DeltaTable(str(table)).history()
        assert {h["operation"] for h in history} >= {"MERGE"}
        late_table = tmp_path / "lake" / "card_activity_late"
        got_late = sorted(r[0] for r in duck().execute(f"select payment_id from delta_scan('{late_table}')").fetchall())
        assert got_late == sorted(r["payment_id"] for r in late)
    # Nothing left over from a run of the same input: running again adds nothing.
    again = run_spec(binary, ROOT / f"table-specs/{name}.yaml", env=env_for(dev_stack, tmp_path, 120))
    assert again.returncode == 0, again.stderr[-3000:]
    assert table_rows(table, example) == got


def tables(tmp_path, example):
    late = tmp_path / "lake" / "card_activity_late"
    late_rows = sorted(duck().execute(f"select payment_id, amount from delta_scan('{late}')").fetchall()) \
        if example["table"] == "card_activity" else []
    return table_rows(tmp_path / "lake" / example["table"], example), late_rows


@pytest.mark.parametrize("dev_stack", [["clicks:1", "payments:1"]], indirect=True)
@pytest.mark.parametrize("name", ["card-activity", "user-sessions"])
def test_restarts_and_a_wiped_state_give_the_same_table(binary, dev_stack, tmp_path, name):
    """One partition and a batch limit make the cuts the same in every run."""
    example = EXAMPLES[name]
    rng = random.Random(f"restart-{name}")
    generate = clicks if example["topic"] == "clicks" else payments
    produce(dev_stack, example["topic"], generate(rng, 1200), partitions=1)
    spec = ROOT / f"table-specs/{name}.yaml"

    straight = tmp_path / "straight"
    result = run_spec(binary, spec, env=env_for(dev_stack, straight, 100))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch failed" not in result.stderr, result.stderr[-3000:]
    want = tables(straight, example)
    assert len(want[0]) > 20

    crashed = tmp_path / "crashed"
    env = env_for(dev_stack, crashed, 100)
    # A crash at each step boundary, at batches 1..6, the state directory
    # wiped once on the way, then twice in the drain's last batch, the one
    # without rows (12, after 12 batches of 100): every restart resumes from
    # what is on disk.
    for point, batch in [("after_read", 1), ("after_plan", 2), ("after_files", 3), ("after_commit", 4),
                         ("wipe", None), ("after_offsets", 5), ("after_commit", 6),
                         ("after_plan", 12), ("after_commit", 12)]:
        if point == "wipe":
            shutil.rmtree(crashed / "state")
            continue
        run = run_spec(binary, spec, env=dict(env, TRIBUTARY_CRASH_AT=f"{point}@{batch}"))
        assert run.returncode != 0, f"no crash at {point}@{batch}: {run.stderr[-2000:]}"
    final = run_spec(binary, spec, env=env)
    assert final.returncode == 0, final.stderr[-3000:]
    assert tables(crashed, example) == want

    # The state directory gone at the end too: rebuilt, nothing rewritten.
    shutil.rmtree(crashed / "state")
    versions = len(DeltaTable(str(crashed / "lake" / example["table"])).history())
    rebuilt = run_spec(binary, spec, env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert "bringing the operator state up to the last planned batch" in rebuilt.stderr
    assert len(DeltaTable(str(crashed / "lake" / example["table"])).history()) == versions
    assert tables(crashed, example) == want


def events(run, message):
    """The fields of the JSON log lines of `run` with this message."""
    out = []
    for line in run.stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("message") == message:
                out.append(event)
    return out


def s3_rows(uri, storage_options, example):
    columns = ["window_start", "window_end"] + ([example["group"]] if example["group"] else []) \
        + [name for name, _, _ in example["aggs"]]
    table = DeltaTable(uri, storage_options=storage_options).to_pyarrow_table(columns=columns).to_pylist()
    micros = lambda t: (t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
    return sorted(tuple(micros(r[c]) if c.startswith("window_") else r[c] for c in columns) for r in table)


@pytest.mark.parametrize("dev_stack", [["payments:1"]], indirect=True)
def test_state_snapshots_on_s3_restore_onto_an_empty_disk(binary, dev_stack, tmp_path, s3):
    """Checkpoint and tables on S3 (moto), state on local disk with a
    snapshot every 3 batches. A node dies after batch 8; its replacement has
    an empty disk, restores the snapshot of batch 8, re-runs nothing, and
    ends with the table of an uninterrupted run."""
    example = EXAMPLES["card-activity"]
    produce(dev_stack, "payments", payments(random.Random("snapshots"), 1400), partitions=1)
    text = (ROOT / "table-specs/card-activity.yaml").read_text()
    text = text.replace("  state_dir: ${TRIBUTARY_STATE_DIR:-/var/lib/tributary/state}\n",
                        "  state_dir: ${TRIBUTARY_STATE_DIR:-/var/lib/tributary/state}\n  state_snapshot_every: 3\n")
    assert "state_snapshot_every: 3" in text
    spec = tmp_path / "card-activity.yaml"
    spec.write_text(text)

    straight = tmp_path / "straight"
    result = run_spec(binary, spec, env=env_for(dev_stack, straight, 100))
    assert result.returncode == 0, result.stderr[-3000:]
    want = table_rows(straight / "lake" / "card_activity", example)

    node = tmp_path / "node"
    env = dict(env_for(dev_stack, node, 100), **s3, TRIBUTARY_LAKE=f"s3://{BUCKET}/lake",
               TRIBUTARY_CHECKPOINTS=f"s3://{BUCKET}/checkpoints")
    json_logs = ("--log-format", "json")
    crashed = run_spec(binary, spec, env=dict(env, TRIBUTARY_CRASH_AT="after_offsets@8"), extra=json_logs)
    assert crashed.returncode != 0
    uploads = events(crashed, "state snapshot uploaded")
    assert [e["batch"] for e in uploads] == [2, 5, 8], crashed.stderr[-1500:]
    shutil.rmtree(node / "state")

    replacement = run_spec(binary, spec, env=env, extra=json_logs)
    assert replacement.returncode == 0, replacement.stderr[-3000:]
    assert [e["batch"] for e in events(replacement, "restored the state snapshot")] == [8]
    assert not events(replacement, "re-running a planned batch with its recorded offsets")
    assert s3_rows(f"s3://{BUCKET}/lake/card_activity", s3, example) == want

    # Incremental: later snapshots reuse SST files uploaded before; two are kept.
    assert all(e["new_sst"] <= 2 for e in uploads) and all(e["reused_sst"] > 0 for e in uploads[1:]), uploads
    # A restored database is a lineage of its own (its files may take the
    # names of files the dead node uploaded): its first snapshot uploads its
    # files anew, later ones reuse them.
    # (Whether its later snapshots reuse files depends on when RocksDB's
    # background compactions ran: one that rewrote every file of this small
    # database leaves nothing to reuse. The crashed run's snapshots above
    # show the reuse.)
    after = events(replacement, "state snapshot uploaded")
    assert after and after[0]["reused_sst"] == 0, after
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/card-activity/state/topic/")
            .get("Contents", [])]
    manifests = sorted(k for k in keys if k.endswith(".json"))
    assert len(manifests) == 2, manifests
    newest = json.loads(client.get_object(Bucket=BUCKET, Key=manifests[-1])["Body"].read())
    for sst in newest["sst"]:
        assert f"checkpoints/card-activity/state/topic/sst/{newest['lineage']}/{sst}" in keys


@pytest.mark.parametrize("dev_stack", [["stamps:2"]], indirect=True)
def test_kafka_timestamp_as_event_time_with_dedup_and_a_late_rows_table(binary, dev_stack, tmp_path):
    """Without event_time.column the Kafka record timestamp is the event
    time. A dedup-only table keeps the records themselves (not windows); late
    records land in their own table."""
    schema = {"type": "record", "name": "Reading", "fields": [
        {"name": "sensor", "type": "string"}, {"name": "seq", "type": "long"}, {"name": "value", "type": "double"}]}
    schema_id = dev_stack.register("stamps-value", schema)
    rng = random.Random("stamps")
    base_ms = millis(BASE)
    clock, sent = base_ms, []
    producer = dev_stack.producer()
    for i in range(900):
        clock += rng.randrange(0, 4000)
        seq = rng.randrange(i) if i and rng.random() < 0.1 else i  # 10% repeat an earlier reading
        stamp = clock - (rng.randrange(0, 20 * 60_000) if rng.random() < 0.08 else rng.randrange(0, 30_000))
        record = {"sensor": f"s{seq % 5}", "seq": seq, "value": float(seq % 97)}
        sent.append(dict(record, ts_ms=stamp, partition=i % 2))
        producer.produce("stamps", value=confluent(schema_id, schema, record), partition=i % 2, timestamp=stamp)
    assert producer.flush(30) == 0
    spec = tmp_path / "stamps.yaml"
    spec.write_text(f"""pipeline: stamps
source:
  kafka:
    bootstrap_servers: '{dev_stack.bootstrap}'
    topic: stamps
  schema_registry:
    url: '{dev_stack.registry}'
  columns:
    offset: kafka_offset
    partition: kafka_partition
table:
  uri: 'file://{tmp_path}/lake/readings'
trigger:
  available_now: true
  max_offsets_per_trigger: 90
checkpoint:
  location: 'file://{tmp_path}/checkpoint'
event_time:
  watermark_delay: 2m
dedup:
  keys: [seq]
late_rows: 'file://{tmp_path}/lake/readings_late'
""")
    progress = tmp_path / "progress.jsonl"
    result = run_spec(binary, spec, extra=("--progress-json", str(progress)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch failed" not in result.stderr

    # Offsets in sent order per partition (one producer, ordered per partition).
    next_offset = {0: 0, 1: 0}
    records = []
    for r in sent:
        records.append(dict(r, _p=r["partition"], _o=next_offset[r["partition"]], _t=r["ts_ms"] * 1000))
        next_offset[r["partition"]] += 1
    batches = batches_of(progress, records)
    delay, max_seen, last_wm, remembered, kept, late = 2 * MINUTE, None, None, {}, [], []
    for records_of_batch in batches:
        # Late: at or before the previous batch's watermark.
        lw = last_wm
        on_time = [r for r in records_of_batch if lw is None or r["_t"] > lw]
        late += [r for r in records_of_batch if not (lw is None or r["_t"] > lw)]
        if lw is not None:
            remembered = {k: e for k, e in remembered.items() if e > lw}
        for r in on_time:
            if r["seq"] not in remembered:
                remembered[r["seq"]] = r["_t"] + delay
                kept.append(r)
        last_wm = watermark(max_seen, delay) if max_seen is not None else last_wm
        if records_of_batch:
            max_seen = max([max_seen or -2**63] + [r["_t"] for r in records_of_batch])
    con = duck()
    got = sorted(con.execute(f"select kafka_partition, kafka_offset, seq from delta_scan('{tmp_path}/lake/readings')").fetchall())
    assert got == sorted((r["_p"], r["_o"], r["seq"]) for r in kept)
    assert len(kept) < len(records) - len(late), "some duplicates were dropped"
    # The table has the record's columns and the named Kafka columns, no hidden ones.
    columns = [c[0] for c in con.execute(f"describe select * from delta_scan('{tmp_path}/lake/readings')").fetchall()]
    assert columns == ["sensor", "seq", "value", "kafka_partition", "kafka_offset"]
    got_late = sorted(con.execute(f"select kafka_partition, kafka_offset from delta_scan('{tmp_path}/lake/readings_late')").fetchall())
    assert late and got_late == sorted((r["_p"], r["_o"]) for r in late)


@pytest.mark.parametrize("dev_stack", [["payments:1"]], indirect=True)
def test_ambiguous_merge_commits_keep_their_files(binary, dev_stack, tmp_path, s3):
    """Update mode's MERGE on S3 behind the fault proxy: every other MERGE
    commit lands but is answered 503, and the retry is refused as a conflict
    with itself. The upsert must recognise its own commit, keep its files,
    and end with the table of an undisturbed run."""
    from fault_proxy import LOG_COMMIT, FaultProxy, Rule
    from test_s3 import logged_adds, s3_objects

    example = EXAMPLES["card-activity"]
    produce(dev_stack, "payments", payments(random.Random("ambiguous merge"), 1200), partitions=1)
    spec = tmp_path / "card-activity.yaml"
    spec.write_text((ROOT / "table-specs/card-activity.yaml").read_text())
    straight = tmp_path / "straight"
    result = run_spec(binary, spec, env=env_for(dev_stack, straight, 100))
    assert result.returncode == 0, result.stderr[-3000:]
    want = table_rows(straight / "lake" / "card_activity", example)

    moto_port = int(s3["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = FaultProxy(moto_port, [Rule("PUT", LOG_COMMIT, every=2, mode="after", body_contains=b'"operation":"MERGE"')])
    env = dict(env_for(dev_stack, tmp_path / "node", 100), **dict(s3, AWS_ENDPOINT_URL=proxy.endpoint),
               TRIBUTARY_LAKE=f"s3://{BUCKET}/lake", TRIBUTARY_CHECKPOINTS=f"s3://{BUCKET}/checkpoints")
    try:
        run = run_spec(binary, spec, env=env)
    finally:
        proxy.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(proxy.rules[0].injected) >= 2, proxy.rules[0].injected
    assert "the merge was answered with an error but had landed; kept" in run.stderr
    _, keys = s3_objects(s3, "lake/card_activity/")
    missing = logged_adds(s3, "lake/card_activity") - set(keys)
    assert not missing, f"files of committed versions were deleted: {sorted(missing)[:5]}"
    assert s3_rows(f"s3://{BUCKET}/lake/card_activity", s3, example) == want


@pytest.mark.parametrize("dev_stack", [["ticks:1"]], indirect=True)
def test_a_running_pipeline_closes_windows_without_more_records(binary, dev_stack, tmp_path):
    """As in Spark, a trigger that finds nothing new runs a batch without
    rows when the watermark moved: a running pipeline writes the windows
    its last records closed without waiting for more records."""
    from conftest import write_spec
    from test_exactly_once import start

    schema = {"type": "record", "name": "Tick", "fields": [
        {"name": "n", "type": "long"}, {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    schema_id = dev_stack.register("ticks-value", schema)
    base = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.timezone.utc)
    # Every 2 s from 10:00:00 to 10:09:58: the watermark becomes 10:09:28,
    # which closes the minutes up to [10:08, 10:09).
    dev_stack.produce("ticks", [(None, confluent(schema_id, schema, {"n": i, "ts": base + dt.timedelta(seconds=2 * i)}), 0)
                                for i in range(300)])
    spec = write_spec(tmp_path / "ticks.yaml", pipeline="ticks", bootstrap=dev_stack.bootstrap, topic="ticks",
                      registry=dev_stack.registry, table=tmp_path / "table", checkpoint=tmp_path / "checkpoint",
                      extra="event_time: {column: ts, watermark_delay: 30s}\nwindow: {tumbling: {size: 1m}}\n"
                            "aggregations: [{name: ticks, function: count}]\n")
    spec.write_text(spec.read_text().replace("  available_now: true\n", ""))
    progress = tmp_path / "progress.jsonl"
    proc = start(binary, spec, extra=("--progress-json", str(progress)))
    minute = lambda k: millis(base + dt.timedelta(minutes=k)) * 1000
    want = [(minute(k), minute(k + 1), 30) for k in range(9)]
    got = None
    try:
        deadline = time.time() + 60
        while got != want:
            assert proc.poll() is None, proc.log.read_text()[-3000:]
            assert time.time() < deadline, (got, proc.log.read_text()[-3000:])
            time.sleep(0.5)
            try:
                got = duck().execute(f"select epoch_us(window_start), epoch_us(window_end), ticks "
                                     f"from delta_scan('{tmp_path}/table') order by 1").fetchall()
            except Exception:  # the table is not there yet
                continue
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    assert sum(e["numInputRows"] for e in events) == 300
    # The windows came with a batch that read nothing.
    assert any(e["numInputRows"] == 0 and e["numOutputRows"] == 9 for e in events), events
