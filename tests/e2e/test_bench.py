"""`tributary bench` as smoke tests: small sizes, no timing assertions. Each
benchmark checks its own result (no lost row; every spoiled record and only
those in the dead letters; every distinct key kept once; every closed window
written once with the count, sum and distinct count of its rows) and fails
the run when it is wrong."""

import os
import pathlib
import re
import subprocess
import sys


def test_bench_decode_isolates_malformed_records(binary):
    result = subprocess.run([binary, "bench", "decode", "--rows", "20000"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rates = dict(re.findall(r"decode with\s+(\d+) % malformed:\s+(\d+) rows/s", result.stdout))
    assert set(rates) == {"1", "10"}, result.stdout
    assert all(int(r) > 0 for r in rates.values())
    kept = re.search(r"transform \(4 columns, where\):\s+(\d+) rows/s\s+\((\d+) % kept", result.stdout)
    assert kept and int(kept.group(1)) > 0 and 50 < int(kept.group(2)) < 80, result.stdout


def run_bench(binary, *args):
    result = subprocess.run([binary, "bench", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_bench_ingest_drains_the_mock_cluster_without_loss(binary):
    out = run_bench(binary, "ingest", "--rows", "30000")
    assert re.search(r"drained into Delta in [\d.]+s: \d+ rows/s end to end, .* zero loss", out), out


def test_bench_ingest_drains_apache_kafka_without_loss(binary, kafka):
    broker = kafka.procs[1].pid
    out = run_bench(binary, "ingest", "--rows", "30000", "--partitions", "4",
                    "--bootstrap-servers", kafka.bootstrap, "--broker-pid", str(broker))
    assert "30000 rows over 4 partitions" in out, out
    assert "zero loss" in out, out
    assert re.search(r"broker CPU during the drain: [\d.]+ core-seconds", out), out
    assert re.search(r"peak RSS during the drain: \d+ MiB", out), out


def test_bench_dedup_keeps_every_distinct_key_once(binary):
    out = run_bench(binary, "dedup", "--keys", "100000", "--batch-rows", "20000")
    assert re.search(r"operator thread \(operate \+ commit\):\s+\d+ rows/s", out), out
    # Which RocksDB the figures came from: the tests' dev build links the
    # prebuilt library, a release build compiles it in.
    assert re.search(r"RocksDB: (compiled into the binary|the shared library \S*librocksdb\S*)", out), out


def test_bench_windows_match_an_independent_count(binary):
    # 2 M rows span 33 minutes of event time: enough for windows to close
    # under the 15-minute delay, each checked against the bench's own count.
    out = run_bench(binary, "windows", "--rows", "2000000", "--batch-rows", "200000", "--cards", "100")
    written = int(re.search(r"(\d+) final windows written", out).group(1))
    assert written > 0, out


def test_latency_bench_reports_percentiles_and_loses_nothing(binary):
    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "latency.py"
    result = subprocess.run([sys.executable, str(script), "2000", "5", "1"], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TRIBUTARY_BIN=binary))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "every offset once in the table" in result.stdout, result.stdout
    assert re.search(r"visible in the table, \d+ rows .*: p50 \d+ ms, p95 \d+ ms, p99 \d+ ms, max \d+ ms",
                     result.stdout), result.stdout
    assert re.search(r"republished to latency-alerts \(read_committed\), [1-9]\d* rows .*: p50 \d+ ms, p95 \d+ ms, "
                     r"p99 \d+ ms, max \d+ ms; every republished row once on the topic", result.stdout), result.stdout


def test_spark_beside_tributary_agrees_with_tributary_and_reports_ratios(binary):
    """benchmarks/spark_beside.py on a small backlog: both engines drain every
    record once and write the same 1-minute windows (the script asserts it)."""
    script = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "spark_beside.py"
    result = subprocess.run([sys.executable, str(script), "200000"], capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, TRIBUTARY_BIN=binary))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for job in ["drain", "windows"]:
        assert re.search(rf"{job} +Tributary +[\d,]+ rows/s, +[\d.]+ CPU-s per M rows, peak RSS +\d+ MiB \| Spark +[\d,]+ rows/s",
                         result.stdout), result.stdout
    assert re.search(r"both tables hold the same [1-9]\d* windows", result.stdout), result.stdout


def test_memory_bench_reports_peak_rss_per_case_and_loses_nothing(binary):
    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "memory.py"
    result = subprocess.run([sys.executable, str(script), "5000"], capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, TRIBUTARY_BIN=binary))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "every table holds each record once" in result.stdout, result.stdout
    cases = re.findall(r"peak RSS +(\d+) MiB", result.stdout)
    assert len(cases) == 8 and all(int(mib) > 0 for mib in cases), result.stdout
