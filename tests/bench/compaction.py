"""Benchmark: a DuckDB aggregate over a table of many small files, before and
after `tributary compact`. The table is written by Python deltalake (one
small append per file), so the compactor works on a table it did not write.

    TRIBUTARY_BIN=target/release/tributary python tests/bench/compaction.py [FILES] [ROWS_PER_FILE]

Prints one JSON line; docs/benchmarks.md records the figures."""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from conftest import duck  # noqa: E402

QUERY = """select user_id % 100 as k, count(*) as n, sum(amount_cents) as total, avg(amount_cents) as mean,
                  count(distinct merchant) as merchants
           from delta_scan('{table}') group by k order by k"""


def batch(start, rows):
    ids = list(range(start, start + rows))
    return pa.table({
        "event_id": pa.array(ids, pa.int64()),
        "user_id": pa.array([i * 7919 % 100_003 for i in ids], pa.int64()),
        "merchant": pa.array([f"m{i % 997}" for i in ids]),
        "amount_cents": pa.array([i % 10_000 for i in ids], pa.int64()),
        "country": pa.array([("DE", "FR", "US", "JP", "BR")[i % 5] for i in ids]),
        "ts": pa.array([1_764_000_000_000_000 + i * 1000 for i in ids], pa.timestamp("us", tz="UTC")),
    })


def timed_query(table, runs=5):
    con = duck()
    result = con.execute(QUERY.format(table=table)).fetchall()  # warm-up, and the answer
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        con.execute(QUERY.format(table=table)).fetchall()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main():
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    binary = os.environ["TRIBUTARY_BIN"]
    work = pathlib.Path(tempfile.mkdtemp(prefix="tributary-compaction-bench-"))
    table = work / "payments"
    started = time.perf_counter()
    for n in range(files):
        write_deltalake(str(table), batch(n * rows, rows), mode="append")
    write_seconds = time.perf_counter() - started
    files_before = len(DeltaTable(str(table)).file_uris())
    before, answer_before = timed_query(table)

    spec = work / "payments.yaml"
    spec.write_text(f"""pipeline: payments
source:
  kafka: {{bootstrap_servers: 'localhost:9092', topic: payments}}
  schema_registry: {{url: 'http://localhost:8081'}}
table: {{uri: 'file://{table}'}}
checkpoint: {{location: 'file://{work}/checkpoint'}}
compaction: {{target_file_size: 256MiB, min_files: 8}}
""")
    started = time.perf_counter()
    out = subprocess.run([binary, "compact", "--spec", str(spec), "--no-vacuum"],
                         capture_output=True, text=True, check=True)
    compact_seconds = time.perf_counter() - started
    report = json.loads(out.stdout.strip().splitlines()[-1])
    files_after = len(DeltaTable(str(table)).file_uris())
    after, answer_after = timed_query(table)
    if answer_after != answer_before:
        diff = [(a, b) for a, b in zip(answer_before, answer_after) if a != b]
        raise AssertionError(f"compaction changed the query's answer: {diff[:3]}")
    print(json.dumps({
        "rows": files * rows,
        "files_before": files_before,
        "files_after": files_after,
        "query_seconds_before": round(before, 4),
        "query_seconds_after": round(after, 4),
        "speedup": round(before / after, 1),
        "compact_seconds": round(compact_seconds, 2),
        "bytes_rewritten": report["bytesRewritten"],
        "write_seconds": round(write_seconds, 1),
    }))


if __name__ == "__main__":
    main()
