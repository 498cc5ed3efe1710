"""Spark Structured Streaming as the oracle: the same out-of-order events,
cut into the same micro-batches, must give the same table in Tributary as in
pyspark. Tributary drains a Kafka topic with `available_now`; the batches it
reports (their offset ranges) become one file each for Spark's file source,
which then runs the equivalent query with `maxFilesPerTrigger: 1` and the
available-now trigger. Streams carry duplicates, out-of-order rows, rows
late for their window and rows far behind the watermark, over 1 and 3
partitions; amounts are whole numbers so sums and averages are exact in any
order."""

import datetime as dt
import json
import random

import pytest

import spark_oracle
from conftest import confluent, duck, run_spec, write_spec

SECOND = 1_000_000  # microseconds
MINUTE = 60 * SECOND
SCHEMA = {"type": "record", "name": "Event", "fields": [
    {"name": "id", "type": "long"},
    {"name": "user", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
]}
SPARK_SCHEMA = "ts_us LONG, id LONG, user STRING, amount DOUBLE"
BASE = dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.timezone.utc)
AGGREGATIONS = [("n", "count", None), ("total", "sum", "amount"), ("low", "min", "amount"),
                ("high", "max", "amount"), ("mean", "avg", "amount")]


def events(rng, n):
    """Out of order by up to 3 minutes; 8% far behind (up to 30 minutes);
    10% repeat an earlier event's id, half of them at another time; a
    quiet 12 minutes now and then closes sessions. Times in steps of 10
    seconds, so rows meet the watermark, window ends and session gaps in
    exact ties."""
    step = 10 * SECOND
    clock = int(BASE.timestamp()) * SECOND
    out = []
    for i in range(n):
        clock += rng.randrange(0, 2) * step
        if i % 350 == 349:
            clock += 12 * MINUTE
        if out and rng.random() < 0.10:
            e = dict(rng.choice(out))
            if rng.random() < 0.5:
                e["ts_us"] += rng.randrange(0, 12) * step
            out.append(e)
            continue
        behind = rng.randrange(0, 180) if rng.random() < 0.08 else rng.randrange(0, 18)
        out.append({"ts_us": clock - behind * step, "id": i, "user": f"u{rng.randrange(6)}",
                    "amount": float(rng.randrange(1, 1000))})
    return out


CASES = {
    # name: (partitions, tributary spec, spark query, output mode)
    "dedup": (3, "dedup: {keys: [id]}",
              lambda df: df.withWatermark("ts", "30 seconds").dropDuplicatesWithinWatermark(["id"]), "append"),
    "dedup-1": (1, "dedup: {keys: [id]}",
                lambda df: df.withWatermark("ts", "30 seconds").dropDuplicatesWithinWatermark(["id"]), "append"),
    "tumbling": (3, "window: {tumbling: {size: 1m}}",
                 lambda df: df.withWatermark("ts", "30 seconds").groupBy(window("1 minute"), "user"), "append"),
    "tumbling-update": (1, "window: {tumbling: {size: 1m}}",
                        lambda df: df.withWatermark("ts", "30 seconds").groupBy(window("1 minute"), "user"),
                        "update"),
    "sliding": (3, "window: {sliding: {size: 4m, slide: 1m}}",
                lambda df: df.withWatermark("ts", "30 seconds").groupBy(window("4 minutes", "1 minute"), "user"),
                "append"),
    "sliding-update": (3, "window: {sliding: {size: 4m, slide: 1m}}",
                       lambda df: df.withWatermark("ts", "30 seconds")
                       .groupBy(window("4 minutes", "1 minute"), "user"), "update"),
    "sliding-uneven": (1, "window: {sliding: {size: 5m, slide: 2m}}",
                       lambda df: df.withWatermark("ts", "30 seconds")
                       .groupBy(window("5 minutes", "2 minutes"), "user"), "append"),
    "session": (3, "window: {session: {gap: 2m}}",
                lambda df: df.withWatermark("ts", "30 seconds").groupBy(session("2 minutes"), "user"), "append"),
}


def window(size, slide=None):
    from pyspark.sql import functions as F
    return F.window("ts", size, slide).alias("w")


def session(gap):
    from pyspark.sql import functions as F
    return F.session_window("ts", gap).alias("w")


def spark_aggregates(grouped):
    from pyspark.sql import functions as F
    return grouped.agg(F.count("*").alias("n"), F.sum("amount").alias("total"), F.min("amount").alias("low"),
                       F.max("amount").alias("high"), F.avg("amount").alias("mean"))


def tributary_batches(progress, placed):
    """The events of each batch Tributary ran, in Kafka order, from the
    offset ranges of its progress events."""
    out = []
    for e in progress:
        (source,) = e["sources"]
        (start,), (end,) = source["startOffset"].values(), source["endOffset"].values()
        out.append([ev for (p, o), ev in sorted(placed.items())
                    if str(p) in start and start[str(p)] <= o < end[str(p)]])
    return out


def topic_of(name):
    return name.replace("-", "_")


@pytest.mark.parametrize("dev_stack", [[f"{topic_of(n)}:{c[0]}" for n, c in CASES.items()]], indirect=True)
def test_tables_equal_sparks_output_batch_for_batch(binary, dev_stack, tmp_path):
    for name, (partitions, stateful, query, mode) in CASES.items():
        topic = topic_of(name)
        rng = random.Random(name)
        stream = events(rng, 1600)
        schema_id = dev_stack.register(f"{topic}-value", SCHEMA)
        sent = dev_stack.produce(topic, [
            (None, confluent(schema_id, SCHEMA, {**e, "ts": dt.datetime.fromtimestamp(e["ts_us"] / SECOND, dt.timezone.utc)}),
             rng.randrange(partitions)) for e in stream])
        placed = dict(zip(sent, stream))
        case_dir = tmp_path / name
        case_dir.mkdir()
        aggregations = "" if stateful.startswith("dedup") else (
            "group_by: [user]\naggregations:\n" + "".join(
                f"  - {{name: {n}, function: {f}" + (f", column: {c}}}\n" if c else "}\n") for n, f, c in AGGREGATIONS)
            + f"output_mode: {mode}\n")
        spec = write_spec(case_dir / "spec.yaml", pipeline=topic, bootstrap=dev_stack.bootstrap,
                          topic=topic, registry=dev_stack.registry, table=case_dir / "table",
                          checkpoint=case_dir / "checkpoint",
                          extra=f"event_time: {{column: ts, watermark_delay: 30s}}\n{stateful}\n{aggregations}")
        spec.write_text(spec.read_text().replace("  available_now: true",
                                                 "  available_now: true\n  max_offsets_per_trigger: 150"))
        progress_path = case_dir / "progress.jsonl"
        result = run_spec(binary, spec, extra=("--progress-json", str(progress_path)), timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        progress = [json.loads(line) for line in progress_path.read_text().splitlines()]
        batches = tributary_batches(progress, placed)
        assert sum(len(b) for b in batches) == len(stream), name

        dedup = stateful.startswith("dedup")
        data_batches = [b for b in batches if b]
        spark_out = spark_oracle.run(
            case_dir, [[{k: e[k] for k in ("ts_us", "id", "user", "amount")} for e in b] for b in data_batches],
            SPARK_SCHEMA, lambda df: query(df) if dedup else spark_aggregates(query(df)),
            columns=["id", "user", "amount", "unix_micros(ts) as ts"] if dedup else
            ["unix_micros(w.start) as start", "unix_micros(w.end) as end", "user", "n", "total", "low", "high", "mean"],
            mode=mode)
        # Spark ran as many batches, its final no-data batch included.
        assert len(spark_out) == len(batches), (name, len(spark_out), len(batches))

        con = duck()
        if stateful.startswith("dedup"):
            got = sorted(con.execute(f"select id, user, amount, epoch_us(ts) from delta_scan('{case_dir}/table')")
                         .fetchall())
            want = sorted((r["id"], r["user"], r["amount"], r["ts"]) for rows in spark_out.values() for r in rows)
        else:
            got = sorted(con.execute(
                f"select epoch_us(window_start), epoch_us(window_end), user, n, total, low, high, mean "
                f"from delta_scan('{case_dir}/table')").fetchall())
            # Update mode: the table keeps each window's latest row.
            latest = {}
            for batch_id in sorted(spark_out):
                for r in spark_out[batch_id]:
                    key = (r["start"], r["end"], r["user"])
                    latest[key] = key + (r["n"], r["total"], r["low"], r["high"], r["mean"])
            want = sorted(latest.values())
        assert len(want) > 30, (name, len(want))
        assert got == want, name


# The example specs against Spark on the same batches, in the columns
# Spark can compute: `count_distinct`, `first` and `last` have no exact
# streaming equivalent there.
EXAMPLE_QUERIES = {
    "users-per-minute": dict(
        topic="clicks", mode="append",
        query=lambda df: df.withWatermark("ts", "5 minutes").dropDuplicatesWithinWatermark(["event_id"])
        .groupBy(window("1 minute")).agg(count_rows("clicks")),
        columns=["unix_micros(w.start) as start", "unix_micros(w.end) as end", "clicks"],
        select="select epoch_us(window_start), epoch_us(window_end), clicks"),
    "user-sessions": dict(
        topic="clicks", mode="append",
        query=lambda df: df.withWatermark("ts", "10 minutes").groupBy(session("30 minutes"), "user_id")
        .agg(count_rows("clicks")),
        columns=["unix_micros(w.start) as start", "unix_micros(w.end) as end", "user_id", "clicks"],
        select="select epoch_us(window_start), epoch_us(window_end), user_id, clicks"),
    "card-activity": dict(
        topic="payments", mode="update",
        query=lambda df: df.withWatermark("ts", "15 minutes").dropDuplicatesWithinWatermark(["payment_id"])
        .groupBy(window("10 minutes", "2 minutes"), "card_id").agg(count_rows("payments"), sum_of("amount")),
        columns=["unix_micros(w.start) as start", "unix_micros(w.end) as end", "card_id", "payments", "amount"],
        select="select epoch_us(window_start), epoch_us(window_end), card_id, payments, amount"),
}
FIELDS = {"clicks": ("event_id", "user_id"), "payments": ("payment_id", "card_id", "amount")}
SPARK_SCHEMAS = {"clicks": "ts_us LONG, event_id STRING, user_id LONG",
                 "payments": "ts_us LONG, payment_id STRING, card_id STRING, amount DOUBLE"}


def count_rows(name):
    from pyspark.sql import functions as F
    return F.count("*").alias(name)


def sum_of(column):
    from pyspark.sql import functions as F
    return F.sum(column).alias(column)


@pytest.mark.parametrize("dev_stack", [["clicks:3", "payments:3"]], indirect=True)
@pytest.mark.parametrize("name", sorted(EXAMPLE_QUERIES))
def test_example_specs_give_sparks_answers(binary, dev_stack, tmp_path, name):
    from conftest import ROOT
    from test_event_time import batches_of, clicks, env_for, payments, produce

    example = EXAMPLE_QUERIES[name]
    generate = clicks if example["topic"] == "clicks" else payments
    records = produce(dev_stack, example["topic"], generate(random.Random(f"spark-{name}"), 1500), partitions=3)
    progress = tmp_path / "progress.jsonl"
    result = run_spec(binary, ROOT / f"table-specs/{name}.yaml", env=env_for(dev_stack, tmp_path, 120),
                      extra=("--progress-json", str(progress)))
    assert result.returncode == 0, result.stderr[-3000:]
    batches = batches_of(progress, records)
    fields = FIELDS[example["topic"]]
    spark_out = spark_oracle.run(
        tmp_path, [[dict({"ts_us": r["_t"]}, **{f: r[f] for f in fields}) for r in b] for b in batches if b],
        SPARK_SCHEMAS[example["topic"]], example["query"], columns=example["columns"], mode=example["mode"])
    assert len(spark_out) == len(batches)
    table = sorted(duck().execute(f"{example['select']} from delta_scan('{tmp_path}/lake/{name.replace('-', '_')}')")
                   .fetchall())
    rows = [tuple(r.values()) for batch_id in sorted(spark_out) for r in spark_out[batch_id]]
    if example["mode"] == "update":
        # The table keeps each window's latest row: (start, end, card).
        rows = list({row[:3]: row for row in rows}.values())
    want = sorted(rows)
    assert len(want) > 20
    assert table == want
