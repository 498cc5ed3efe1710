"""Stateful pipelines on several groups and instances, against Apache Kafka:
schema evolution that one partition's group makes under another's feet,
update mode's MERGE from 8 groups on one table, and the repartition stage
(Kafka as the shuffle) that makes windows and dedup correct when the keys
are spread over partitions, through SIGKILLs of every instance."""

import collections
import datetime as dt
import json
import random
import signal
import time

import pytest
from deltalake import DeltaTable, Field

from conftest import ROOT, confluent, duck, run_spec
from test_exactly_once import lines, log_of, row_count, start, wait_until
from test_event_time import PAYMENT_SCHEMA, env_for
from test_schema_evolution import V1, V2, order

BASE = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


def spec_text(stack, tmp_path, name, topic, body, available_now=False, max_offsets=200, source=""):
    return f"""pipeline: {name}
source:{source}
  kafka:
    bootstrap_servers: '{stack.bootstrap}'
    topic: {topic}
    properties: {{session.timeout.ms: '6000', heartbeat.interval.ms: '500'}}
  schema_registry:
    url: '{stack.registry}'
table:
  uri: 'file://{tmp_path}/lake/{name}'
trigger:
  interval: 200ms
  max_offsets_per_trigger: {max_offsets}
  available_now: {str(available_now).lower()}
checkpoint:
  location: 'file://{tmp_path}/ckpt/{name}'
  state_dir: '{tmp_path}/state/{name}'
{body}"""


def columns(table):
    return [r[0] for r in duck().execute(f"describe select * from delta_scan('{table}')").fetchall()]


@pytest.mark.parametrize("dev_stack", [["evo:2"]], indirect=True)
def test_a_group_meets_the_schema_another_group_evolved(binary, dev_stack, tmp_path):
    """Partition 0's group evolves the table to v2 while partition 1's group,
    already running with the v1 table schema, keeps writing v1 records; then
    someone adds a column with ALTER TABLE. Every record lands, nothing exits."""
    v1, v2 = dev_stack.register("evo-value", V1), dev_stack.register("evo-value", V2)
    spec = tmp_path / "evo.yaml"
    spec.write_text(spec_text(dev_stack, tmp_path, "evo", "evo", "state_scope: partition\n"))
    table = tmp_path / "lake" / "evo"

    def produce(ids, version, partition):
        schema_id, schema = (v1, V1) if version == 1 else (v2, V2)
        dev_stack.produce("evo", [(None, confluent(schema_id, schema, order(n, version)), partition) for n in ids])

    events = tmp_path / "events.jsonl"
    run = start(binary, spec, extra=("--progress-json", str(events)))
    try:
        produce(range(0, 50), 1, 0)
        produce(range(50, 100), 1, 1)
        wait_until(lambda: row_count(table) == 100, 90, "v1 rows of both partitions")
        produce(range(100, 150), 2, 0)
        wait_until(lambda: "coupon" in columns(table) and row_count(table) == 150, 90, "partition 0 to evolve the table")
        # Partition 1's group encoded its last batches with the v1 table schema.
        produce(range(150, 200), 1, 1)
        wait_until(lambda: row_count(table) == 200, 90, "partition 1's v1 rows after the evolution")
        DeltaTable(str(table)).alter.add_columns(
            [Field("note", "string", nullable=True)])
        produce(range(200, 250), 1, 1)
        produce(range(250, 300), 2, 0)
        wait_until(lambda: row_count(table) == 300, 90, "rows of both partitions after ALTER TABLE ADD COLUMNS")
        assert run.poll() is None, log_of(run)[-3000:]
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0, log_of(run)[-3000:]
    con = duck()
    assert columns(table) == ["id", "name", "geo", "coupon", "note"]
    rows = con.execute(f"select id, coupon, note from delta_scan('{table}') order by id").fetchall()
    assert [r[0] for r in rows] == list(range(300))
    v2_ids = set(range(100, 150)) | set(range(250, 300))
    assert rows == [(n, (f"C{n}" if n % 2 else None) if n in v2_ids else None, None) for n in range(300)]
    assert DeltaTable(str(table)).to_pyarrow_table().num_rows == 300


def expected_counts(records, size_us):
    """(window_start µs, card, payments, amount) of a tumbling count and sum."""
    out = {}
    for r in records:
        ts = int(r["ts"].timestamp() * 1_000_000)
        key = (ts - ts % size_us, r["card_id"])
        n, amount = out.get(key, (0, 0.0))
        out[key] = (n + 1, amount + r["amount"])
    return sorted((k[0], k[1], n, a) for k, (n, a) in out.items())


def card_partition(card, partitions):
    return int(card.removeprefix("card")) % partitions


@pytest.mark.parametrize("dev_stack", [["cards:8"]], indirect=True)
def test_update_mode_merges_from_eight_groups_all_land(binary, dev_stack, tmp_path):
    """Eight groups MERGE windows into one table, batch after batch: the
    losers of each race back off and redo their merge, nobody fails, and
    the conflicts are counted."""
    rng = random.Random(8)
    records = []
    clock = BASE
    for i in range(4000):
        clock += dt.timedelta(milliseconds=rng.randrange(0, 600))
        records.append({"payment_id": f"pay{i}", "card_id": f"card{rng.randrange(40)}", "merchant": f"m{rng.randrange(9)}",
                        "amount": float(rng.randrange(1, 500)), "ts": clock})
    schema_id = dev_stack.register("cards-value", PAYMENT_SCHEMA)
    dev_stack.produce("cards", [(r["card_id"].encode(), confluent(schema_id, PAYMENT_SCHEMA, r),
                                 card_partition(r["card_id"], 8)) for r in records])
    spec = tmp_path / "cards.yaml"
    spec.write_text(spec_text(dev_stack, tmp_path, "cards", "cards", """state_scope: partition
event_time: {column: ts, watermark_delay: 1h}
window: {tumbling: {size: 1m}}
group_by: [card_id]
aggregations:
  - {name: payments, function: count}
  - {name: amount, function: sum, column: amount}
output_mode: update
""", available_now=True, max_offsets=40, source="\n  partitioned_by: [card_id]"))
    events = tmp_path / "events.jsonl"
    result = run_spec(binary, spec, extra=("--progress-json", str(events)), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [json.loads(line) for line in lines(events)]
    assert {e["group"] for e in progress} == {f"p{p}" for p in range(8)}
    assert sum(e["sink"]["numCommitConflicts"] for e in progress) > 0, "eight groups never collided: the test proves nothing"
    table = tmp_path / "lake" / "cards"
    got = duck().execute(f"""select epoch_us(window_start), card_id, payments, amount from delta_scan('{table}')
                             order by 1, 2""").fetchall()
    assert got == expected_counts(records, 60_000_000)


def calm_payments(rng, n, span_minutes=12):
    """Payments of 15 cards over `span_minutes` of event time, out of order
    by up to 2 minutes, 5% duplicates. The whole span is shorter than
    card-activity's 15-minute watermark delay, so no row is ever late,
    whatever the order the partitions are read in: any correct run, on one
    instance or several, must give the same table."""
    step = span_minutes * 60 / n
    out = []
    for i in range(n):
        if out and rng.random() < 0.05:
            out.append(dict(rng.choice(out)))
            continue
        ts = BASE + dt.timedelta(seconds=i * step - rng.uniform(0, 120))
        out.append({"payment_id": f"pay{i}", "card_id": f"card{rng.randrange(15)}", "merchant": f"m{rng.randrange(9)}",
                    "amount": float(rng.randrange(1, 500)), "ts": max(ts, BASE)})
    return out


def card_activity_env(stack, root, available_now):
    return dict(env_for(stack, root, 300), TRIBUTARY_AVAILABLE_NOW=str(available_now).lower())


def card_activity_spec(path, repartition):
    """The example spec; its dedup keys name the card too (a payment's
    duplicates share its card), so one shuffle by card serves both the
    dedup and the windows."""
    text = (ROOT / "table-specs/card-activity.yaml").read_text().replace("keys: [payment_id]", "keys: [payment_id, card_id]")
    assert "keys: [payment_id, card_id]" in text
    if repartition:
        text = (text.replace("checkpoint:", "state_scope: partition\nrepartition: {topic: payments-by-card, partitions: 4}\ncheckpoint:", 1)
                .replace("    starting_offsets: earliest\n",
                         "    starting_offsets: earliest\n    properties: {session.timeout.ms: '6000', heartbeat.interval.ms: '500'}\n", 1))
    path.write_text(text)
    return path


def table_rows(table, columns):
    try:
        return duck().execute(f"select {columns} from delta_scan('{table}') order by all").fetchall()
    except Exception:
        return None


def produce_payments(stack, records, partitions=3):
    schema_id = stack.register("payments-value", PAYMENT_SCHEMA)
    return stack.produce("payments", [(None, confluent(schema_id, PAYMENT_SCHEMA, r), i % partitions)
                                      for i, r in enumerate(records)])


def repartitioned_exactly_once(stack, topic, source_offsets):
    """Reads the repartition topic as read_committed and checks that it holds
    every source record (topic, partition, offset headers) exactly once."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"check-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.subscribe([topic])
    seen, eof, deadline = [], set(), time.time() + 60
    partitions = None
    while time.time() < deadline:
        m = consumer.poll(1.0)
        if m is None:
            continue
        if m.error():
            eof.add(m.partition())
            partitions = partitions or len(consumer.list_topics(topic).topics[topic].partitions)
            if len(eof) == partitions:
                break
            continue
        headers = dict(m.headers() or [])
        seen.append((int(headers["tributary.source.partition"]), int(headers["tributary.source.offset"])))
    consumer.close()
    duplicated = [p for p, n in collections.Counter(seen).items() if n > 1]
    assert not duplicated, f"records shuffled twice: {sorted(duplicated)[:10]}"
    expected = sorted(tuple(p) for p in source_offsets)
    assert sorted(seen) == expected, f"{len(set(expected) - set(seen))} source records missing"


CARD_COLUMNS = "epoch_us(window_start), epoch_us(window_end), card_id, payments, amount, merchants"


@pytest.mark.parametrize("dev_stack", [["payments:3"]], indirect=True)
def test_card_activity_on_two_instances_with_repartitioning_equals_one_instance(binary, dev_stack, tmp_path):
    """The example card-activity spec (sliding windows, update mode, dedup)
    over cards spread on 3 partitions, run by 2 instances through a
    repartition topic, with one instance's shuffle aborted mid-transaction
    and each instance SIGKILLed once: its table equals a single-instance
    state_scope: topic run on the same records."""
    records = calm_payments(random.Random(19), 3000)
    chunks = [records[i:i + 250] for i in range(0, len(records), 250)]
    scaled = tmp_path / "scaled"
    spec = card_activity_spec(tmp_path / "scaled.yaml", repartition=True)
    env = card_activity_env(dev_stack, scaled, available_now=False)
    events = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    # A's shuffle aborts in its second transaction, mid-way (records sent, not committed).
    a = start(binary, spec, env=dict(env, TRIBUTARY_CRASH_AT="in_repartition@1"), extra=("--progress-json", str(events[0])))
    b = start(binary, spec, env=env, extra=("--progress-json", str(events[1])))
    placed = []
    try:
        for chunk in chunks[:4]:
            placed += produce_payments(dev_stack, chunk)
            time.sleep(1.5)
        wait_until(lambda: a.poll() is not None, 60, "the first instance's shuffle to abort mid-transaction")
        assert "TRIBUTARY_CRASH_AT: aborting at in_repartition" in log_of(a), log_of(a)[-3000:]
        a = start(binary, spec, env=env, extra=("--progress-json", str(events[0])))
        for chunk in chunks[4:8]:
            placed += produce_payments(dev_stack, chunk)
            time.sleep(1.5)
        wait_until(lambda: lines(events[1]), 60, "the second instance to commit batches")
        b.send_signal(signal.SIGKILL)
        b.wait()
        for chunk in chunks[8:10]:
            placed += produce_payments(dev_stack, chunk)
            time.sleep(1)
        b = start(binary, spec, env=env, extra=("--progress-json", str(events[1])))
        time.sleep(3)
        a.send_signal(signal.SIGKILL)
        a.wait()
        for chunk in chunks[10:]:
            placed += produce_payments(dev_stack, chunk)
        a = start(binary, spec, env=env, extra=("--progress-json", str(events[0])))

        # The reference: one instance, state_scope: topic, on the same records.
        reference = tmp_path / "reference"
        ref_spec = card_activity_spec(tmp_path / "reference.yaml", repartition=False)
        result = run_spec(binary, ref_spec, env=card_activity_env(dev_stack, reference, available_now=True), timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        expected = table_rows(reference / "lake" / "card_activity", CARD_COLUMNS)
        assert expected and len(expected) > 100
        wait_until(lambda: table_rows(scaled / "lake" / "card_activity", CARD_COLUMNS) == expected, 180,
                   "the scaled-out table to equal the single-instance one")
        assert a.poll() is None and b.poll() is None, log_of(a)[-2000:] + log_of(b)[-2000:]
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    groups = {json.loads(line)["group"] for e in events for line in lines(e)}
    assert groups == {f"p{p}" for p in range(4)}, groups
    assert table_rows(scaled / "lake" / "card_activity_late", "count(*)") in (None, [(0,)])
    assert len(placed) == len(records)
    repartitioned_exactly_once(dev_stack, "payments-by-card", placed)
    from test_exactly_once import verify
    verify(spec, env=env)


@pytest.mark.parametrize("dev_stack", [["payments:3"]], indirect=True)
def test_duplicates_in_different_partitions_are_dropped_across_instances(binary, dev_stack, tmp_path):
    """Every payment is sent twice, to two different partitions; two
    instances dedup through the repartition stage: each lands once."""
    rng = random.Random(7)
    unique = calm_payments(rng, 1500)
    unique = list({r["payment_id"]: r for r in unique}.values())
    schema_id = dev_stack.register("payments-value", PAYMENT_SCHEMA)
    spec = tmp_path / "dedup.yaml"
    spec.write_text(spec_text(dev_stack, tmp_path, "dedup", "payments", """state_scope: partition
repartition: {topic: payments-by-id, partitions: 4}
event_time: {column: ts, watermark_delay: 1h}
dedup: {keys: [payment_id]}
"""))
    events = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    a = start(binary, spec, extra=("--progress-json", str(events[0])))
    b = start(binary, spec, extra=("--progress-json", str(events[1])))
    table = tmp_path / "lake" / "dedup"
    try:
        for i in range(0, len(unique), 300):
            part = unique[i:i + 300]
            dev_stack.produce("payments", [(None, confluent(schema_id, PAYMENT_SCHEMA, r), (j + copy) % 3)
                                           for j, r in enumerate(part) for copy in (0, 1)])
            time.sleep(1)
        wait_until(lambda: row_count(table) >= len(unique), 120, "every payment")
        time.sleep(3)
        assert a.poll() is None and b.poll() is None, log_of(a)[-2000:] + log_of(b)[-2000:]
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log_of(proc)[-3000:]
    ids = [r[0] for r in duck().execute(f"select payment_id from delta_scan('{table}') order by 1").fetchall()]
    assert ids == sorted(r["payment_id"] for r in unique)
    progress = [json.loads(line) for e in events for line in lines(e)]
    assert all(e["eventTime"] for e in progress)
    assert sum(e["eventTime"]["numDuplicateRows"] for e in progress) == len(unique)
    assert lines(events[0]) and lines(events[1]), "both instances should run groups"

    # A bounded run (available_now) shuffles what is new, then drains the
    # repartition topic: the duplicates of later payments meet the state.
    later = [dict(r, payment_id=f"later{i}") for i, r in enumerate(unique[:200])]
    dev_stack.produce("payments", [(None, confluent(schema_id, PAYMENT_SCHEMA, r), (j + copy) % 3)
                                   for j, r in enumerate(later) for copy in (0, 1)])
    spec.write_text(spec.read_text().replace("available_now: false", "available_now: true"))
    result = run_spec(binary, spec, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert row_count(table) == len(unique) + len(later)
    assert duck().execute(f"select count(distinct payment_id) from delta_scan('{table}')").fetchone()[0] == row_count(table)


@pytest.mark.parametrize("dev_stack", [["cards:1"]], indirect=True)
def test_a_merge_keeps_a_column_added_by_alter_table(binary, dev_stack, tmp_path):
    """Someone adds a column to an update-mode table and fills it; a later
    merge rewrites the files holding replaced windows: the rows it keeps
    keep their values of that column."""
    schema_id = dev_stack.register("cards-value", PAYMENT_SCHEMA)

    def produce(rows):
        dev_stack.produce("cards", [(None, confluent(schema_id, PAYMENT_SCHEMA, r), 0) for r in rows])

    first = [{"payment_id": f"p{i}", "card_id": f"card{i % 4}", "merchant": "m", "amount": 1.0,
              "ts": BASE + dt.timedelta(seconds=i)} for i in range(40)]
    produce(first)
    spec = tmp_path / "alter.yaml"
    spec.write_text(spec_text(dev_stack, tmp_path, "alter", "cards", """event_time: {column: ts, watermark_delay: 1h}
window: {tumbling: {size: 1m}}
group_by: [card_id]
aggregations: [{name: payments, function: count}]
output_mode: update
""", available_now=True, max_offsets=1000))
    result = run_spec(binary, spec)
    assert result.returncode == 0, result.stderr[-3000:]
    table = tmp_path / "lake" / "alter"
    dt_table = DeltaTable(str(table))
    dt_table.alter.add_columns([Field("note", "string", nullable=True)])
    dt_table.update({"note": "'checked'"})
    # Only card0's window changes; the file also holds the other cards' rows.
    produce([dict(first[0], payment_id="p-late", amount=2.0)])
    result = run_spec(binary, spec)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = duck().execute(f"select card_id, payments, note from delta_scan('{table}') order by card_id").fetchall()
    assert rows == [("card0", 11, None), ("card1", 10, "checked"), ("card2", 10, "checked"), ("card3", 10, "checked")]
