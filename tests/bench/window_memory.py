"""Benchmark: the peak memory of a stateful backfill, a 1-minute tumbling
window count (watermark 10 s), against the size of its batches.

Apache Kafka (a one-node KRaft cluster, its own process) and the development
registry hold ROWS records of the 10-field benchmark schema in 4 partitions
(`tributary bench produce`). Each case is one `tributary run` process that
drains the topic with `available_now` into its own table and exits, with
`table.target_file_size` (the batch's bytes of record values) as given;
its peak RSS is the process's `ru_maxrss`. Every case must write the same
windows with the same counts (read back by DuckDB's delta extension):
batch boundaries must not change the answer.

    TRIBUTARY_BIN=target/release/tributary KAFKA_LIBS=~/.cache/tributary/kafka-4.1.1/libs \\
        python tests/bench/window_memory.py [ROWS] [TARGET_FILE_SIZE ...]

docs/benchmarks.md (Memory) records the figures."""

import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from conftest import DevStack, duck, write_spec  # noqa: E402
from kafka_cluster import KafkaCluster  # noqa: E402
from tools import produce_backlog, run_to_exit  # noqa: E402

TOPIC = "events"
WINDOWS = ("event_time: {column: ts, watermark_delay: 10s}\n"
           "window: {tumbling: {size: 1m}}\n"
           "aggregations:\n  - {name: count, function: count}\n")


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
    sizes = sys.argv[2:] or ["256MiB", "64MiB", "32MiB"]
    binary = os.environ["TRIBUTARY_BIN"]
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        cluster = KafkaCluster(work / "kafka", jit=True)
        stack = DevStack(binary, [f"{TOPIC}:4"], kafka=cluster)
        try:
            sent = produce_backlog(binary, stack, TOPIC, rows, 300_000)
            print(f"window memory: {sent} records of the 10-field schema in 4 partitions, "
                  "a 1-minute window count, Apache Kafka in its own process", flush=True)
            con, first = duck(), None
            for n, size in enumerate(sizes):
                spec = write_spec(work / f"w{n}.yaml", pipeline=f"w{n}", bootstrap=cluster.bootstrap, topic=TOPIC,
                                  registry=stack.registry, table=work / f"t{n}", checkpoint=work / f"c{n}",
                                  extra=WINDOWS)
                spec.write_text(spec.read_text().replace(
                    "  partition_by: []\n", f"  partition_by: []\n  target_file_size: {size}\n"))
                wall, cpu, rss = run_to_exit(binary, spec, spec.with_suffix(".log"))
                windows = sorted(con.sql(
                    f"select epoch_ms(window_start), count from delta_scan('{work / f't{n}'}')").fetchall())
                assert windows, "no window was written"
                first = first or windows
                assert windows == first, f"{size} batches wrote other windows than {sizes[0]} batches"
                print(f"  target_file_size {size:>7}: peak RSS {rss:6.0f} MiB, {wall:5.1f} s, {cpu:5.1f} CPU-s, "
                      f"{len(windows)} windows of {sum(c for _, c in windows)} records", flush=True)
        finally:
            stack.stop()
            cluster.close()


if __name__ == "__main__":
    main()
