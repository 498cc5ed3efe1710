"""Compaction: bin-packing with dataChange=false, beside live ingest.

Rows are checked by DuckDB's delta extension (a checksum over every row) and
time travel by Python deltalake, both independent of Tributary."""

import json
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pyarrow
import pytest
import yaml
from deltalake import DeltaTable
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, confluent, duck, run_spec, write_spec
from test_admin import COMPACTION_METRICS
from test_exactly_once import assert_exactly_once, log_of, produce_ids, spec_for, start

SCHEMA = {"type": "record", "name": "Reading", "fields": [
    {"name": "id", "type": "long"}, {"name": "bucket", "type": "string"}, {"name": "pad", "type": "string"}]}

READING = ("id", "bucket", "pad")
EVENT = ("id", "pad")


def checksum(table, columns, version=None):
    """(rows, sum of ids, sum of row hashes) of the table, by DuckDB or, at an
    older version, by deltalake + DuckDB over its Arrow table."""
    con = duck()
    if version is None:
        source = f"delta_scan('{table}')"
    else:
        arrow = DeltaTable(str(table), version=version).to_pyarrow_table()  # noqa: F841 (read by DuckDB)
        source = "arrow"
    return con.execute(
        f"select count(*), sum(id), sum(hash({', '.join(columns)})::hugeint) from {source}").fetchone()


def expected_file_count(adds, target, min_files):
    """The documented bin-packing, applied independently: per partition,
    files smaller than the target, in the order they were added, fill bins of
    at most `target` bytes; bins of two or more files become one file."""
    by_partition = {}
    for a in adds:
        by_partition.setdefault(a["partition.bucket"], []).append(a)
    count = 0
    for files in by_partition.values():
        small = sorted((f for f in files if f["size_bytes"] < target),
                       key=lambda f: (f["modification_time"], f["path"]))
        count += len(files) - len(small)
        if len(small) < min_files:
            count += len(small)
            continue
        bins, current, size = [], [], 0
        for f in small:
            if current and size + f["size_bytes"] > target:
                bins.append(current)
                current, size = [], 0
            current.append(f)
            size += f["size_bytes"]
        bins.append(current)
        count += sum(1 if len(b) >= 2 else len(b) for b in bins)
    return count


def millis(ts):
    """deltalake reports modification times as timestamps; compaction orders by milliseconds."""
    return ts if isinstance(ts, int) else int(ts.timestamp() * 1000)


@pytest.mark.parametrize("dev_stack", [["readings:3"]], indirect=True)
def test_compact_bin_packs_keeps_every_row_and_older_versions(binary, dev_stack, tmp_path):
    schema_id = dev_stack.register("readings-value", SCHEMA)
    dev_stack.produce("readings", [
        (None, confluent(schema_id, SCHEMA, {"id": i, "bucket": f"b{i % 3}", "pad": "p" * (i % 40)}), None)
        for i in range(24000)])
    table = tmp_path / "lake" / "readings"
    target, min_files = 20 * 1024, 4
    spec = write_spec(
        tmp_path / "readings.yaml", pipeline="readings", bootstrap=dev_stack.bootstrap, topic="readings",
        registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt", partition_by=["bucket"],
        extra=f"compaction:\n  target_file_size: {target}\n  min_files: {min_files}\n  checkpoint_interval: 5\n",
    )
    spec.write_text(spec.read_text().replace("  available_now: true", "  available_now: true\n  max_offsets_per_trigger: 400"))
    ingested = run_spec(binary, spec)
    assert ingested.returncode == 0, ingested.stderr[-3000:]

    before = DeltaTable(str(table))
    version_before = before.version()
    adds = pyarrow.table(before.get_add_actions(flatten=True)).to_pylist()
    for a in adds:
        a["modification_time"] = millis(a["modification_time"])
    assert len(adds) >= 60, f"expected many small files, got {len(adds)}"
    expected = expected_file_count(adds, target, min_files)
    assert expected < len(adds) / 3, (expected, len(adds))
    sums_before = checksum(table, READING)
    assert sums_before[0] == 24000

    compacted = subprocess.run([binary, "compact", "--spec", str(spec)], capture_output=True, text=True, timeout=120)
    assert compacted.returncode == 0, compacted.stderr[-3000:]
    report = json.loads(compacted.stdout.strip().splitlines()[-1])
    assert report["filesBefore"] == len(adds)
    assert report["filesAfter"] == expected
    assert report["rowsRewritten"] > 0 and report["bytesRewritten"] > 0
    assert report["conflicts"] == 0 and report["error"] is None
    assert report["filesVacuumed"] == 0, "a week's retention deletes nothing yet"

    after = DeltaTable(str(table))
    assert len(after.file_uris()) == expected
    assert checksum(table, READING) == sums_before, "the rows are not the same multiset"

    # The history shows the rewrite, and every rewrite commit is dataChange=false.
    optimize = [h for h in after.history() if h["operation"] == "OPTIMIZE"]
    assert optimize, after.history()[:3]
    assert len(optimize) == report["partitionsRewritten"] == 3
    for f in sorted((table / "_delta_log").glob("*.json")):
        version = int(f.stem)
        if version <= version_before:
            continue
        actions = [json.loads(line) for line in f.read_text().splitlines()]
        assert any(a.get("commitInfo", {}).get("operation") == "OPTIMIZE" for a in actions)
        changes = [a[k]["dataChange"] for a in actions for k in ("add", "remove") if k in a]
        assert changes and not any(changes), f"{f.name}: {changes}"
        assert not any("txn" in a for a in actions)
    # A log checkpoint was written (every 5 commits since the last one).
    assert report["checkpointVersion"] is not None
    assert (table / "_delta_log" / "_last_checkpoint").exists()

    # Time travel: the version before compaction still reads the same rows, from its own files.
    assert checksum(table, READING, version=version_before) == sums_before
    assert len(DeltaTable(str(table), version=version_before).file_uris()) == len(adds)


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_ingest_beside_a_compaction_loop_for_a_minute(binary, dev_stack, tmp_path):
    schema_id = produce_ids(dev_stack, "eo", 0, 2000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=400, available_now=False, interval="200ms")
    spec.write_text(spec.read_text() + (
        "compaction:\n  interval: 2s\n  min_files: 3\n  target_file_size: 4MiB\n  checkpoint_interval: 10\n"))
    proc = start(binary, spec)
    produced = 2000
    deadline = time.time() + 65
    while time.time() < deadline:
        produce_ids(dev_stack, "eo", produced, 500, schema_id)
        produced += 500
        time.sleep(0.4)
        assert proc.poll() is None, log_of(proc)[-3000:]
    table = tmp_path / "lake" / "eo"
    con = duck()
    for _ in range(120):
        if con.execute(f"select count(*) from delta_scan('{table}')").fetchone()[0] >= produced:
            break
        time.sleep(0.5)
    url = re.search(r"admin server listening on (http://127\.0\.0\.1:\d+)", log_of(proc)).group(1)
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        samples = {s.name: s.value for fam in text_string_to_metric_families(resp.read().decode())
                   for s in fam.samples if s.labels.get("pipeline") == "eo"}
    # Every compaction metric the dashboard and the alerts name is exported.
    dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in yaml.safe_load((ROOT / "docs/alerts.yaml").read_text())["groups"] for r in g["rules"]]
    named = {m for e in exprs for m in re.findall(r"tributary_[a-z_]+", e) if m.startswith(COMPACTION_METRICS)}
    assert len(named) >= 3 and named <= set(samples), f"not exported: {sorted(named - set(samples))}"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log_of(proc)[-3000:]

    assert_exactly_once(tmp_path, range(produced), compacted=True)
    history = DeltaTable(str(table)).history()
    optimize_versions = sorted(h["version"] for h in history if h["operation"] == "OPTIMIZE")
    assert len(optimize_versions) >= 5, f"only {len(optimize_versions)} compaction commits in a minute"
    assert samples["tributary_compaction_passes_total"] >= 5, samples
    assert samples["tributary_compaction_files_removed_total"] > samples["tributary_compaction_files_added_total"] > 0
    assert samples.get("tributary_compaction_failures_total", 0) == 0, log_of(proc)[-3000:]
    assert list((table / "_delta_log").glob("*.checkpoint.parquet")), "no log checkpoint"
    # Every compaction commit changed the layout only: the version before it reads the same rows.
    for v in optimize_versions[:3]:
        assert checksum(table, EVENT, version=v - 1) == checksum(table, EVENT, version=v)


PEAK_RSS = """import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(done.stderr)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def compact_peak_rss(binary, spec):
    """`tributary compact` run alone under a fresh Python: (exit code, peak RSS in bytes)."""
    import sys
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, binary, "compact", "--spec", str(spec)],
                          capture_output=True, text=True, timeout=300)
    code, peak = done.stdout.split()
    return int(code), int(peak), done.stderr


def small_files_table(path, files, rows, value_bytes):
    """A table of `files` appends of incompressible rows: as large in memory as on disk."""
    import os
    from deltalake import write_deltalake
    for f in range(files):
        write_deltalake(str(path), pyarrow.table({
            "id": pyarrow.array(range(f * rows, (f + 1) * rows), pyarrow.int64()),
            "blob": pyarrow.array([os.urandom(value_bytes) for _ in range(rows)], pyarrow.binary()),
        }), mode="append")


def test_compaction_holds_about_its_memory_bound_however_large_the_partition(binary, tmp_path):
    mib = 1 << 20
    bound = 16 * mib
    spec_text = f"""pipeline: blobs
source:
  kafka: {{bootstrap_servers: 'localhost:9092', topic: blobs}}
  schema_registry: {{url: 'http://localhost:8081'}}
table: {{uri: 'file://{tmp_path}/lake/TABLE'}}
checkpoint: {{location: 'file://{tmp_path}/ckpt/TABLE'}}
compaction: {{target_file_size: {8 * mib}, max_memory: {bound}, min_files: 2}}
"""
    # The same pass over four small files gives the process's own footprint.
    small_files_table(tmp_path / "lake" / "few", 4, 100, 1000)
    few = tmp_path / "few.yaml"
    few.write_text(spec_text.replace("TABLE", "few"))
    code, baseline, log = compact_peak_rss(binary, few)
    assert code == 0, log[-3000:]

    # 120 MB of small files in one partition: more than seven times the bound.
    small_files_table(tmp_path / "lake" / "many", 120, 1000, 1000)
    many = tmp_path / "many.yaml"
    many.write_text(spec_text.replace("TABLE", "many"))
    code, peak, log = compact_peak_rss(binary, many)
    assert code == 0, log[-3000:]
    table = DeltaTable(str(tmp_path / "lake" / "many"))
    assert len(table.file_uris()) < 20
    assert duck().execute(f"select count(*), sum(id) from delta_scan('{tmp_path}/lake/many')").fetchone() == \
        (120_000, sum(range(120_000)))
    # Several commits, each of at most the bound.
    optimize = [h for h in table.history() if h["operation"] == "OPTIMIZE"]
    assert len(optimize) >= 120 * mib // bound - 1, len(optimize)
    assert peak - baseline < 4 * bound, f"peak RSS {peak / mib:.0f} MiB, {baseline / mib:.0f} MiB for four files"
