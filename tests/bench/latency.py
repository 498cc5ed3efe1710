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

    TRIBUTARY_BIN=target/release/tributary KAFKA_LIBS=~/.cache/tributary/kafka-4.1.1/libs \\
        python tests/bench/latency.py [RATE] [SECONDS] [WARMUP]

Prints p50 / p95 / p99 / max in milliseconds, the rate reached, and
Tributary's peak RSS; docs/benchmarks.md records the figures."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import duckdb

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from conftest import DevStack, write_spec  # noqa: E402
from kafka_cluster import KafkaCluster  # noqa: E402
from tools import peak_rss_mib, produce  # noqa: E402

PARTITIONS = 4


def commits(table):
    """(file path, commit time in ms) of every data file the log adds."""
    out = []
    for entry in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in entry.read_text().splitlines() if line.strip()]
        at = next((a["commitInfo"]["timestamp"] for a in actions if "commitInfo" in a), None)
        out += [(str(table / a["add"]["path"]), at) for a in actions if "add" in a]
    return out


def main():
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    warmup = float(sys.argv[3]) if len(sys.argv) > 3 else 5
    binary = os.environ["TRIBUTARY_BIN"]
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        cluster = KafkaCluster(work / "kafka", jit=True)
        stack = DevStack(binary, [f"latency:{PARTITIONS}"], kafka=cluster)
        table = work / "table"
        spec = write_spec(work / "latency.yaml", pipeline="latency", bootstrap=cluster.bootstrap, topic="latency",
                          registry=stack.registry, table=table, checkpoint=work / "checkpoint")
        # A steady stream: a 1 s trigger, no draining and stopping.
        text = spec.read_text().replace("  available_now: true\n  interval: 500ms\n", "  interval: 1s\n")
        text = text.replace("    topic: latency\n", "    topic: latency\n  columns:\n    timestamp: kafka_ts\n"
                                                   "    partition: kafka_partition\n    offset: kafka_offset\n")
        spec.write_text(text)
        run = subprocess.Popen([binary, "run", "--spec", str(spec), "--admin-addr", "127.0.0.1:0"],
                               stdout=subprocess.DEVNULL, stderr=open(work / "run.log", "w"))
        try:
            time.sleep(2)
            sent, reached = produce(binary, stack, "latency", rate, int(seconds))
            # Let the last trigger commit what was sent.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                files = commits(table)
                if files and duckdb.sql(f"select count(*) from read_parquet({[f for f, _ in files]})").fetchone()[0] >= sent:
                    break
                time.sleep(1)
            rss = peak_rss_mib(run.pid)
        finally:
            run.terminate()
            run.wait(60)
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
        p50, p95, p99, worst, measured = con.sql(f"""
            select quantile_cont(lat, 0.5), quantile_cont(lat, 0.95), quantile_cont(lat, 0.99), max(lat), count(*)
            from (select committed_ms - epoch_ms(kafka_ts) as lat
                  from rows join commits using (filename)
                  where epoch_ms(kafka_ts) >= {first} + {int(warmup * 1000)})""").fetchone()
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
        print(f"  a commit's newest row was {newest_age:.0f} ms old when it was committed (median over commits)")
        print(f"  Tributary peak RSS {rss:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
