"""Benchmark: how long a row takes from Kafka to being visible in the table.

Apache Kafka (a one-node KRaft cluster, its own process) and the development
registry run beside `tributary run` with a 1 s trigger. A producer sends a
steady RATE rows/s of the 10-field benchmark record for SECONDS
(`tributary bench produce`, a native producer). A row's
latency is the time its Delta commit was written (the commit's
`commitInfo.timestamp`) less its Kafka timestamp (set by the producer when it
sent the row). Rows of the first WARMUP seconds are left out: they wait for
the pipeline to start. The table is then checked: every produced offset is in
it exactly once (DuckDB over the table's Parquet files).

The same run republishes the rows whose `url` is `/checkout` (about one in
twelve) to the topic `latency-alerts` from inside `tributary run`, as an
alert pipeline would. A `read_committed` consumer started before the load
notes when each republished row reached it; that row's latency is this
time less its Kafka timestamp. The script fails unless every such row of
the table reached the consumer exactly once, and no other row did.

    TRIBUTARY_BIN=target/release/tributary KAFKA_LIBS=~/.cache/tributary/kafka-4.1.1/libs \\
        python tests/bench/latency.py [RATE] [SECONDS] [WARMUP] [REPUBLISH_INTERVAL]

REPUBLISH_INTERVAL (default 200ms) is the sink's `republish.interval`: how
often it looks for new table versions besides when the pipeline commits.

Prints p50 / p95 / p99 / max in milliseconds for the table and for the
republished rows, the rate reached, and Tributary's peak RSS;
docs/benchmarks.md records the figures."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import duckdb
from confluent_kafka import Consumer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from conftest import DevStack, write_spec  # noqa: E402
from kafka_cluster import KafkaCluster  # noqa: E402
from tools import peak_rss_mib, produce, with_offset_columns  # noqa: E402

PARTITIONS = 4
ALERTS = "latency-alerts"
REPUBLISH = """republish:
  topic: {alerts}
  filter: url = '/checkout'
  columns: [kafka_partition, kafka_offset]
  format: json
  interval: {interval}
"""


def commits(table):
    """(file path, commit time in ms) of every data file the log adds."""
    out = []
    for entry in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in entry.read_text().splitlines() if line.strip()]
        at = next((a["commitInfo"]["timestamp"] for a in actions if "commitInfo" in a), None)
        out += [(str(table / a["add"]["path"]), at) for a in actions if "add" in a]
    return out


class AlertReader:
    """A `read_committed` consumer of the republished rows, in a thread of
    its own: (source partition, source offset, ms it arrived) of each."""

    def __init__(self, bootstrap):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "latency-bench",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                  "isolation.level": "read_committed", "fetch.wait.max.ms": 10})
        self.consumer.subscribe([ALERTS])
        self.arrived = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.read)
        self.thread.start()

    def read(self):
        while not self.done.is_set():
            for msg in self.consumer.consume(1000, timeout=0.05):
                at = time.time_ns() // 1_000_000
                if msg.error():
                    raise RuntimeError(msg.error())
                row = json.loads(msg.value())
                self.arrived.append((row["kafka_partition"], row["kafka_offset"], at))
        self.consumer.close()

    def stop(self):
        self.done.set()
        self.thread.join(30)


def percentiles(con, latencies):
    return con.sql(f"""select quantile_cont(lat, 0.5), quantile_cont(lat, 0.95), quantile_cont(lat, 0.99),
                              max(lat), count(*) from ({latencies})""").fetchone()


def main():
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    warmup = float(sys.argv[3]) if len(sys.argv) > 3 else 5
    republish_interval = sys.argv[4] if len(sys.argv) > 4 else "200ms"
    binary = os.environ["TRIBUTARY_BIN"]
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        cluster = KafkaCluster(work / "kafka", jit=True)
        stack = DevStack(binary, [f"latency:{PARTITIONS}", f"{ALERTS}:1"], kafka=cluster)
        table = work / "table"
        spec = write_spec(work / "latency.yaml", pipeline="latency", bootstrap=cluster.bootstrap, topic="latency",
                          registry=stack.registry, table=table, checkpoint=work / "checkpoint")
        # A steady stream: a 1 s trigger, no draining and stopping.
        spec.write_text(spec.read_text().replace("  available_now: true\n  interval: 500ms\n", "  interval: 1s\n")
                        + REPUBLISH.format(alerts=ALERTS, interval=republish_interval))
        with_offset_columns(spec, "latency", timestamp="kafka_ts")
        alerts = AlertReader(cluster.bootstrap)
        run = subprocess.Popen([binary, "run", "--spec", str(spec), "--admin-addr", "127.0.0.1:0"],
                               stdout=subprocess.DEVNULL, stderr=open(work / "run.log", "w"))
        try:
            time.sleep(2)
            sent, reached = produce(binary, stack, "latency", rate, int(seconds))
            # Let the last trigger commit what was sent.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                files = commits(table)
                if files:
                    held, to_republish = duckdb.sql(f"""select count(*), count(*) filter (where url = '/checkout')
                                                         from read_parquet({[f for f, _ in files]})""").fetchone()
                    if held >= sent and len(alerts.arrived) >= to_republish:
                        break
                time.sleep(1)
            rss = peak_rss_mib(run.pid)
        finally:
            run.terminate()
            run.wait(60)
            alerts.stop()
            stack.stop()
            cluster.close()
        files = commits(table)
        con = duckdb.connect()
        con.execute("create table commits(filename varchar, committed_ms bigint)")
        con.executemany("insert into commits values (?, ?)", files)
        con.execute(f"create table rows as select * from read_parquet({[f for f, _ in files]}, filename=true)")
        rows, distinct = con.sql("select count(*), count(distinct (kafka_partition, kafka_offset)) from rows").fetchone()
        assert rows == sent and distinct == sent, f"{rows} rows, {distinct} distinct offsets, {sent} sent"
        first = con.sql("select min(epoch_ms(kafka_ts)) from rows").fetchone()[0]
        since_warmup = f"epoch_ms(kafka_ts) >= {first} + {int(warmup * 1000)}"
        p50, p95, p99, worst, measured = percentiles(con, f"""
            select committed_ms - epoch_ms(kafka_ts) as lat from rows join commits using (filename)
            where {since_warmup}""")
        con.execute("create table arrived(kafka_partition integer, kafka_offset bigint, arrived_ms bigint)")
        con.executemany("insert into arrived values (?, ?, ?)", alerts.arrived)
        expected = con.sql("select count(*) from rows where url = '/checkout'").fetchone()[0]
        arrived, distinct, qualifying = con.sql("""
            select count(*), count(distinct (kafka_partition, kafka_offset)), count(url) filter (where url = '/checkout')
            from arrived left join rows using (kafka_partition, kafka_offset)""").fetchone()
        assert arrived == distinct == qualifying == expected, \
            f"{arrived} republished ({distinct} distinct, {qualifying} with url /checkout), {expected} expected"
        r50, r95, r99, rworst, rmeasured = percentiles(con, f"""
            select arrived_ms - epoch_ms(kafka_ts) as lat from arrived join rows using (kafka_partition, kafka_offset)
            where {since_warmup}""")
        # How old each commit's newest row was when it was committed: the
        # part of the latency that is not waiting for the next trigger.
        newest_age = con.sql("""
            select quantile_cont(age, 0.5) from (
                select max(committed_ms) - max(epoch_ms(kafka_ts)) as age
                from rows join commits using (filename) group by committed_ms)""").fetchone()[0]
        print(f"latency bench: {sent} rows at {reached:.0f} rows/s (asked {rate}) for {seconds:.0f} s, "
              f"1 s trigger, {PARTITIONS} partitions; every offset once in the table")
        print(f"  event (Kafka timestamp) -> visible in the table, {measured} rows after the first {warmup:.0f} s: "
              f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms")
        print(f"  event -> republished to {ALERTS} (read_committed), {rmeasured} rows after the first {warmup:.0f} s: "
              f"p50 {r50:.0f} ms, p95 {r95:.0f} ms, p99 {r99:.0f} ms, max {rworst:.0f} ms; "
              f"every republished row once on the topic")
        print(f"  a commit's newest row was {newest_age:.0f} ms old when it was committed (median over commits)")
        print(f"  Tributary peak RSS {rss:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
