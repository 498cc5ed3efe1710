"""`tributary verify` finds what would make a table wrong: a batch committed
twice, offsets read twice or never, a batch id missing, a live file gone. The
table is made wrong by hand, one fault at a time, after a clean run; each
fault must be found, and the clean table must pass (with and without the
broker)."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import run_spec
from test_admin import admin_url
from test_exactly_once import held_offsets, log_of, produce_ids, spec_for, start, verify


def run_verify(binary, spec, *extra):
    out = subprocess.run([binary, "verify", "--spec", str(spec), *extra], capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout, out.stderr


def findings(binary, spec, *extra):
    code, out, err = run_verify(binary, spec, "--json", *extra)
    assert code == 1, f"verify found nothing: {out[-2000:]}{err[-2000:]}"
    return json.loads(out)["findings"]


def commits(log):
    return sorted(log.glob("*.json"))


def actions(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_commit(log, version, acts):
    (log / f"{version:020}.json").write_text("".join(json.dumps(a) + "\n" for a in acts))


@pytest.mark.parametrize("dev_stack", [["eo:1"]], indirect=True)
def test_verify_finds_each_kind_of_fault(binary, dev_stack, tmp_path):
    schema_id = produce_ids(dev_stack, "eo", 0, 3000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=500)
    drained = run_spec(binary, spec)
    assert drained.returncode == 0, drained.stderr[-3000:]

    report = verify(spec)
    assert held_offsets(report) == 3000
    [group] = report["groups"]
    assert (group["firstBatch"], group["lastBatch"], group["commits"]) == (0, 5, 6)
    assert group["offsets"] == {"0": [[0, 3000]]}
    assert group["rows"] == 3000
    code, text, _ = run_verify(binary, spec, "--offline")
    assert code == 0 and "ok       no gap, no overlap" in text, text

    log = tmp_path / "lake" / "eo" / "_delta_log"
    last = commits(log)[-1]
    version = int(last.stem)
    last_actions = actions(last)
    info = next(a["commitInfo"]["tributary"] for a in last_actions if "commitInfo" in a)

    # 1. The last batch committed again (its files re-added).
    write_commit(log, version + 1, last_actions)
    found = findings(binary, spec)
    kinds = {f["kind"] for f in found}
    assert kinds == {"batchCommittedTwice", "offsetsOverlap"}, found
    twice = next(f for f in found if f["kind"] == "batchCommittedTwice")
    assert twice["batch"] == info["batchId"] and twice["versions"] == [version, version + 1]
    (log / f"{version + 1:020}.json").unlink()

    # 2. A batch id skipped, and offsets that hold records never read: the
    # broker is asked and names the first record lost.
    produce_ids(dev_stack, "eo", 3000, 100, schema_id)
    skipped = json.loads(json.dumps(info))
    skipped.update(batchId=info["batchId"] + 2, ranges=[{"partition": 0, "start": 3050, "end": 3100}],
                   endOffsets={"0": 3100})
    write_commit(log, version + 1, [
        {"commitInfo": {"operation": "WRITE", "tributary": skipped}},
        {"txn": {"appId": info["appId"], "version": skipped["batchId"]}},
    ])
    found = findings(binary, spec)
    assert [f["kind"] for f in found] == ["batchMissing"], found
    assert found[0]["batch"] == info["batchId"] + 1
    next_batch = dict(skipped, batchId=info["batchId"] + 1)
    write_commit(log, version + 1, [
        {"commitInfo": {"operation": "WRITE", "tributary": next_batch}},
        {"txn": {"appId": info["appId"], "version": next_batch["batchId"]}},
    ])
    [gap] = findings(binary, spec)
    assert gap["kind"] == "offsetsGap", gap
    assert (gap["partition"], gap["start"], gap["end"], gap["firstRecord"]) == (0, 3000, 3050, 3000), gap
    [offline_gap] = findings(binary, spec, "--offline")
    assert offline_gap["firstRecord"] is None and "not asked" in offline_gap["reason"]
    (log / f"{version + 1:020}.json").unlink()

    # 3. A live data file deleted from storage.
    table = tmp_path / "lake" / "eo"
    victim = next(p for p in table.rglob("*.parquet") if "_delta_log" not in p.parts)
    shutil.move(victim, tmp_path / "victim.parquet")
    [missing] = findings(binary, spec)
    assert missing["kind"] == "fileMissing" and missing["path"] == os.path.relpath(victim, table), missing
    shutil.move(tmp_path / "victim.parquet", victim)
    verify(spec)


def metric(text, name, pipeline):
    m = re.search(rf'^{name}{{pipeline="{pipeline}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


@pytest.mark.parametrize("dev_stack", [["eo:2"]], indirect=True)
def test_run_verifies_every_n_batches_into_a_metric(binary, dev_stack, tmp_path):
    schema_id = produce_ids(dev_stack, "eo", 0, 1000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=200, available_now=False, interval="200ms")
    proc = start(binary, spec, extra=["--verify-every", "3"])
    try:
        url = admin_url(proc.log)
        produce_ids(dev_stack, "eo", 1000, 1000, schema_id)
        deadline = time.time() + 60
        while True:
            text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
            if (metric(text, "tributary_verify_runs_total", "eo") or 0) >= 2:
                break
            assert time.time() < deadline, text[-3000:]
            assert proc.poll() is None, log_of(proc)[-3000:]
            time.sleep(0.5)
        assert metric(text, "tributary_verify_findings", "eo") == 0
        assert metric(text, "tributary_verify_errors_total", "eo") == 0
        assert metric(text, "tributary_verify_last_timestamp_seconds", "eo") > time.time() - 120
        rules = yaml.safe_load((Path(__file__).parents[2] / "docs/alerts.yaml").read_text())
        named = {m for g in rules["groups"] for r in g["rules"] for m in re.findall(r"tributary_verify_[a-z_]+", r["expr"])}
        assert named and all(metric(text, m, "eo") is not None for m in named), named

        # A fault appears under the running pipeline: the next verification reports it.
        table = tmp_path / "lake" / "eo"
        victim = next(p for p in table.rglob("*.parquet") if "_delta_log" not in p.parts)
        victim.unlink()
        produce_ids(dev_stack, "eo", 2000, 1000, schema_id)
        while (metric(text, "tributary_verify_findings", "eo") or 0) == 0:
            assert time.time() < deadline + 60, text[-3000:]
            time.sleep(0.5)
            text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        assert "verify found a problem in the table" in log_of(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
