"""Benchmark: `tributary bench ingest` against Apache Kafka running as its own
process (a one-node KRaft cluster started from the jars scripts/lib.sh
fetches), then against the in-process mock cluster, in one run, so the two
can be compared. The broker runs with its JIT fully on, as in production.

    TRIBUTARY_BIN=target/release/tributary KAFKA_LIBS=~/.cache/tributary/kafka-4.1.1/libs \\
        python tests/bench/kafka_ingest.py [ROWS] [PARTITIONS] [RUNS]

Prints `tributary bench ingest`'s report for each run; docs/benchmarks.md
records the figures."""

import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from kafka_cluster import KafkaCluster  # noqa: E402


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
    partitions = sys.argv[2] if len(sys.argv) > 2 else "8"
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    binary = os.environ["TRIBUTARY_BIN"]
    with tempfile.TemporaryDirectory() as work:
        cluster = KafkaCluster(pathlib.Path(work) / "kafka", jit=True)
        try:
            pid = str(cluster.procs[1].pid)
            for _ in range(runs):
                out = subprocess.run([binary, "bench", "ingest", "--rows", str(rows), "--partitions", partitions,
                                      "--bootstrap-servers", cluster.bootstrap, "--broker-pid", pid],
                                     capture_output=True, text=True)
                assert out.returncode == 0, out.stderr[-3000:]
                print("Apache Kafka (another process):", out.stdout.strip(), flush=True)
        finally:
            cluster.close()
    for _ in range(runs):
        out = subprocess.run([binary, "bench", "ingest", "--rows", str(rows)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        print("mock cluster (in process):", out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
