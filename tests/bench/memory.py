"""Benchmark: how Tributary's peak memory grows with the partitions it reads
and the pipelines one process runs.

Apache Kafka (a one-node KRaft cluster, its own process) and the development
registry hold, per topic, ROWS records of the 10-field benchmark schema
(`tributary bench produce`). Each case is one `tributary run` process that
drains its topics with `available_now` and exits; its peak RSS is the
process's `ru_maxrss`. Cases:

  partitions: one pipeline over a topic of 1, 8, 32 and 64 partitions
  pipelines:  1, 2, 4 and 8 pipelines in one process, each over its own
              topic of 8 partitions

Every table is then checked: it holds each produced record once (DuckDB
with its delta extension, by partition and offset).

    TRIBUTARY_BIN=target/release/tributary KAFKA_LIBS=~/.cache/tributary/kafka-4.1.1/libs \\
        python tests/bench/memory.py [ROWS]

docs/benchmarks.md records the figures."""

import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from conftest import DevStack, duck, write_spec  # noqa: E402
from kafka_cluster import KafkaCluster  # noqa: E402
from tools import produce_backlog, run_to_exit, with_offset_columns  # noqa: E402

PARTITIONS = [1, 8, 32, 64]
PIPELINES = [1, 2, 4, 8]


def drain(binary, work, cluster, stack, case, topics):
    """Runs one process over `topics` (name: records sent); returns its peak
    RSS in MiB and its wall time, after checking every table."""
    specs = work / case
    specs.mkdir()
    for topic in topics:
        spec = write_spec(specs / f"{topic}.yaml", pipeline=f"{case}-{topic}", bootstrap=cluster.bootstrap,
                          topic=topic, registry=stack.registry, table=work / "tables" / case / topic,
                          checkpoint=work / "checkpoints" / case / topic)
        with_offset_columns(spec, topic)
    wall, _, rss = run_to_exit(binary, specs, work / f"{case}.log")
    con = duck()
    for topic, sent in topics.items():
        rows, offsets = con.sql(f"select count(*), count(distinct (kafka_partition, kafka_offset)) "
                                f"from delta_scan('{work / 'tables' / case / topic}')").fetchone()
        assert rows == sent and offsets == sent, f"{case}/{topic}: {rows} rows, {offsets} offsets, {sent} sent"
    return rss, wall


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    binary = os.environ["TRIBUTARY_BIN"]
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        cluster = KafkaCluster(work / "kafka", jit=True)
        topics = [f"p{p}:{p}" for p in PARTITIONS] + [f"set{i}:8" for i in range(max(PIPELINES))]
        stack = DevStack(binary, topics, kafka=cluster)
        try:
            sent = {t.split(":")[0]: produce_backlog(binary, stack, t.split(":")[0], rows, 500_000) for t in topics}
            print(f"memory bench: about {rows} records per topic, 10-field schema, each case one `tributary run` "
                  f"draining with available_now; every table holds each record once")
            for p in PARTITIONS:
                rss, wall = drain(binary, work, cluster, stack, f"partitions-{p}", {f"p{p}": sent[f"p{p}"]})
                print(f"  1 pipeline, {p:>2} partitions: peak RSS {rss:6.0f} MiB, drained in {wall:5.1f} s",
                      flush=True)
            for n in PIPELINES:
                chosen = {f"set{i}": sent[f"set{i}"] for i in range(n)}
                rss, wall = drain(binary, work, cluster, stack, f"pipelines-{n}", chosen)
                print(f"  {n} pipeline(s) of 8 partitions: peak RSS {rss:6.0f} MiB, drained in {wall:5.1f} s",
                      flush=True)
        finally:
            stack.stop()
            cluster.close()


if __name__ == "__main__":
    main()
