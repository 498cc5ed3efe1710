"""Storage that fails under the pipeline: files that no longer parse, and a
checkpoint disk that fills up. Nothing may be lost or written twice, and
nothing may fail silently or forever: an unreadable file stops the pipeline
after a few attempts with an error naming it (and /readyz says so while it
retries); a full disk fails batches cleanly until space is back.

(Ambiguous S3 commits, the other storage fault, are in test_s3.py: they need
the fault-injecting proxy in front of moto.)"""

import json
import os
import random
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from deltalake import DeltaTable

from conftest import run_spec
from test_admin import admin_url
from test_exactly_once import (assert_exactly_once, held_offsets, json_events, lines, log_of, partition_scope_spec,
                               produce_ids, row_count, spec_for, start, verify, wait_until)


def readyz(url):
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def stops_naming(binary, spec, name):
    """Runs the pipeline, which must report `name` unreadable on /readyz while
    it retries, then stop with exit 1 naming it."""
    proc = start(binary, spec)
    url = admin_url(proc.log)
    seen = None
    deadline = time.time() + 60
    while proc.poll() is None:
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("still retrying after a minute: " + log_of(proc)[-2000:])
        status, body = readyz(url)
        if status == 503 and "unreadable" in body:
            seen = body
        time.sleep(0.05)
    log = log_of(proc)
    assert proc.returncode == 1, log[-3000:]
    assert seen is not None and name in seen, f"/readyz never reported it: {log[-2000:]}"
    assert f"{name} is unreadable" in log, log[-3000:]
    assert log.count("batch failed; nothing of it is committed") == 2, "expected two retries before stopping"
    return log


@pytest.mark.parametrize("dev_stack", [["eo:2"]], indirect=True)
def test_an_unreadable_offsets_log_file_stops_the_pipeline_naming_it(binary, dev_stack, tmp_path):
    schema_id = produce_ids(dev_stack, "eo", 0, 2000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=500)
    assert run_spec(binary, spec).returncode == 0
    plan = sorted((tmp_path / "ckpt" / "offsets" / "topic").glob("*.json"))[-1]
    plan.write_text(plan.read_text()[:40])  # cut short, as a disk may leave it
    produce_ids(dev_stack, "eo", 2000, 500, schema_id)

    stops_naming(binary, spec, str(plan))
    # Moved aside as the message says: the batch is adopted from the table.
    plan.rename(plan.with_suffix(".broken"))
    done = run_spec(binary, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_once(tmp_path, range(2500))


@pytest.mark.parametrize("dev_stack", [["eo:2"]], indirect=True)
def test_an_unreadable_delta_commit_stops_the_pipeline_naming_it(binary, dev_stack, tmp_path):
    schema_id = produce_ids(dev_stack, "eo", 0, 2000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=500)
    assert run_spec(binary, spec).returncode == 0
    commit = sorted((tmp_path / "lake" / "eo" / "_delta_log").glob("*.json"))[-1]
    whole = commit.read_text()
    commit.write_text(whole[:60])
    produce_ids(dev_stack, "eo", 2000, 500, schema_id)

    log = stops_naming(binary, spec, f"_delta_log/{commit.name}")
    assert "restore it from the bucket's versioning or a backup" in log
    commit.write_text(whole)  # restored
    done = run_spec(binary, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_once(tmp_path, range(2500))


@pytest.mark.parametrize("dev_stack", [["eo:2"]], indirect=True)
def test_an_unreadable_last_checkpoint_pointer_is_read_around(binary, dev_stack, tmp_path):
    """`_last_checkpoint` is only a hint: deltalake lists the log instead, so
    the pipeline goes on, exactly."""
    schema_id = produce_ids(dev_stack, "eo", 0, 2000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=500)
    assert run_spec(binary, spec).returncode == 0
    table = tmp_path / "lake" / "eo"
    DeltaTable(str(table)).create_checkpoint()
    (table / "_delta_log" / "_last_checkpoint").write_text('{"version": 2, "si')
    produce_ids(dev_stack, "eo", 2000, 500, schema_id)
    done = run_spec(binary, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_once(tmp_path, range(2500))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path/ckpt: the checkpoint's own disk."""
    mount = tmp_path / "ckpt"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("dev_stack", [["eo:2"]], indirect=True)
def test_a_full_checkpoint_disk_fails_batches_cleanly_until_space_is_back(binary, dev_stack, tmp_path, small_disk):
    schema_id = produce_ids(dev_stack, "eo", 0, 2000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=300, available_now=False, interval="200ms")
    proc = start(binary, spec)
    try:
        deadline = time.time() + 60
        while not list((small_disk / "offsets" / "topic").glob("*.json")):
            assert time.time() < deadline and proc.poll() is None, log_of(proc)[-3000:]
            time.sleep(0.2)
        fill(small_disk)
        committed_when_full = DeltaTable(str(tmp_path / "lake" / "eo")).version()
        produce_ids(dev_stack, "eo", 2000, 3000, schema_id)
        deadline = time.time() + 60
        while "No space left on device" not in log_of(proc):
            assert time.time() < deadline and proc.poll() is None, log_of(proc)[-3000:]
            time.sleep(0.2)
        assert proc.poll() is None, "a full disk stopped the pipeline"
        # At most the batch planned before the disk filled can land meanwhile.
        assert DeltaTable(str(tmp_path / "lake" / "eo")).version() <= committed_when_full + 1
        (small_disk / "filler").unlink()
        deadline = time.time() + 120
        while True:
            rows = DeltaTable(str(tmp_path / "lake" / "eo")).to_pyarrow_table(columns=["id"]).num_rows
            if rows >= 5000:
                break
            assert time.time() < deadline and proc.poll() is None, log_of(proc)[-3000:]
            time.sleep(0.5)
    finally:
        proc.send_signal(2)
        proc.wait(60)
    assert proc.returncode == 0, log_of(proc)[-3000:]
    assert_exactly_once(tmp_path, range(5000))


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_partitions_revoked_while_their_batches_fail_leave_the_instance_running(binary, dev_stack, tmp_path,
                                                                                small_disk):
    """state_scope: partition with the checkpoint's disk full: every group's
    batches fail and are retried. A second instance joins, and the first
    gives up partitions whose batches are failing: their retries are the new
    owner's, so the first goes on with the rest (it used to stop on the
    revoked group's error), and /readyz forgets the groups it gave up. Once
    space is back, every record lands exactly once."""
    schema_id = produce_ids(dev_stack, "eo", 0, 2000)
    spec = partition_scope_spec(dev_stack, tmp_path)
    a_events = tmp_path / "a.jsonl"
    json_logs = ("--log-format", "json")
    a = start(binary, spec, extra=("--progress-json", str(a_events), *json_logs))
    b = None
    everything = {"p0", "p1", "p2", "p3"}
    try:
        wait_until(lambda: {json.loads(line)["group"] for line in lines(a_events)} == everything, 90,
                   "the first instance to run every partition")
        fill(small_disk)
        produce_ids(dev_stack, "eo", 2000, 2000, schema_id)

        def failing():
            return {e["group"] for e in json_events(a, "batch failed") if "No space left on device" in e["error"]}

        wait_until(lambda: failing() == everything or a.poll() is not None, 60, "every group's batches to fail")
        b = start(binary, spec, extra=json_logs)
        wait_until(lambda: json_events(a, "partitions revoked") or a.poll() is not None, 90, "the rebalance")
        wait_until(lambda: json_events(a, "the revoked partition's batch in flight failed") or a.poll() is not None,
                   90, "the revoked groups to stop")
        time.sleep(2)
        assert a.poll() is None, "a revoked partition's failing batch stopped the instance: " + log_of(a)[-3000:]
        # The revocation is eager: every partition is given up, then half are
        # assigned back. A group waiting to retry ends on its failure; one
        # retrying at that moment may end cleanly, having planned nothing.
        given_up = {f'p{e["partition"]}' for e in json_events(a, "the revoked partition's batch in flight failed")}
        assert given_up and given_up <= everything, given_up
        (small_disk / "filler").unlink()
        wait_until(lambda: row_count(tmp_path / "lake" / "eo") >= 4000, 180, "every record")
        status, body = readyz(admin_url(a.log))
        assert status == 200, body
    finally:
        for proc in (a, b):
            if proc:
                proc.send_signal(15)
        assert a.wait(60) == 0, log_of(a)[-3000:]
        assert b is None or b.wait(60) == 0, log_of(b)[-3000:]
    assert_exactly_once(tmp_path, range(4000), app_ids=[f"eo/p{p}" for p in range(4)])


def fill(directory):
    """Writes a file into `directory` until its disk is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("dev_stack", [["payments:1", "payments_straight:1"]], indirect=True)
def test_a_full_state_disk_fails_batches_cleanly_until_space_is_back(binary, dev_stack, tmp_path):
    """An event-time pipeline (windows in update mode, dedup) whose RocksDB
    disk fills up between two runs: its batches fail, nothing is half
    applied, and once space is back the table is the one the same two runs
    give without faults (on a copy of the topic: each `available_now` drain
    ends with its own batch without rows, so two drains are not one)."""
    from test_event_time import EXAMPLES, ROOT, env_for, payments, produce, table_rows

    example = EXAMPLES["card-activity"]
    records = payments(random.Random("full-state"), 1400)
    spec = tmp_path / "card-activity.yaml"
    spec.write_text((ROOT / "table-specs/card-activity.yaml").read_text())
    straight_spec = tmp_path / "card-activity-straight.yaml"
    straight_spec.write_text(spec.read_text().replace("topic: payments\n", "topic: payments_straight\n"))
    assert "payments_straight" in straight_spec.read_text()
    straight = tmp_path / "straight"
    for topic in ("payments", "payments_straight"):
        produce(dev_stack, topic, records[:700], partitions=1)
    whole = run_spec(binary, straight_spec, env=env_for(dev_stack, straight, 100))
    assert whole.returncode == 0, whole.stderr[-3000:]

    node = tmp_path / "node"
    (node / "state").mkdir(parents=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(node / "state")],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    try:
        env = env_for(dev_stack, node, 100)
        first = run_spec(binary, spec, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        fill(node / "state")
        for topic in ("payments", "payments_straight"):
            produce(dev_stack, topic, records[700:], partitions=1)
        proc = start(binary, spec, env=env)
        deadline = time.time() + 60
        while "No space left on device" not in log_of(proc):
            assert time.time() < deadline, log_of(proc)[-3000:]
            assert proc.poll() is None, "a full state disk stopped the pipeline: " + log_of(proc)[-3000:]
            time.sleep(0.2)
        time.sleep(2)  # a retry or two against the full disk
        assert proc.poll() is None, log_of(proc)[-3000:]
        (node / "state" / "filler").unlink()
        assert proc.wait(180) == 0, log_of(proc)[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(node / "state")], check=False)

    whole = run_spec(binary, straight_spec, env=env_for(dev_stack, straight, 100))
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert table_rows(node / "lake" / "card_activity", example) == table_rows(straight / "lake" / "card_activity", example)
    assert held_offsets(verify(spec, env=env)) == 1400
