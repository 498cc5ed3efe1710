"""Tables and checkpoints on S3: moto's S3 server (which implements
conditional put) started on a loopback port; the table is read back from S3
by Python deltalake, the objects listed with boto3.

Two recoveries are proven: with a local checkpoint that a replacement node
lost (it resumes from the table's own commit records), and with an s3://
checkpoint, from which a node with an empty disk re-runs a crashed batch with
exactly its recorded offsets and deletes the crashed attempt's files."""

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import pytest
from deltalake import DeltaTable

from conftest import free_port, run_spec
from fault_proxy import LOG_COMMIT, FaultProxy, Rule
from test_exactly_once import held_offsets, log_of, produce_ids, spec_for, start, verify

BUCKET = "tributary-lake"


@pytest.fixture
def s3(tmp_path):
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "moto.log", "w"))
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=10)
    yield {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    proc.terminate()
    proc.wait(10)


def s3_spec(stack, tmp_path, options, available_now):
    spec = spec_for(stack, tmp_path, max_offsets=400, available_now=available_now, interval="200ms")
    text = spec.read_text().replace(f"'file://{tmp_path / 'lake' / 'eo'}'", f"'s3://{BUCKET}/lake/eo'")
    assert f"s3://{BUCKET}/lake/eo" in text
    lines = "".join(f"    {k}: '{v}'\n" for k, v in options.items())
    text = text.replace(f"  uri: 's3://{BUCKET}/lake/eo'\n", f"  uri: 's3://{BUCKET}/lake/eo'\n  storage_options:\n{lines}")
    text += "compaction:\n  interval: 2s\n  min_files: 3\n"
    spec.write_text(text)
    return spec


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_s3_table_with_compaction_survives_a_kill_and_a_wiped_disk(binary, dev_stack, tmp_path, s3):
    schema_id = produce_ids(dev_stack, "eo", 0, 4000)
    spec = s3_spec(dev_stack, tmp_path, s3, available_now=False)
    proc = start(binary, spec)
    produced = 4000
    for _ in range(20):  # ten seconds of ingest beside compaction passes every 2 s
        produce_ids(dev_stack, "eo", produced, 400, schema_id)
        produced += 400
        time.sleep(0.5)
        assert proc.poll() is None, log_of(proc)[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A replacement node: nothing local survives.
    shutil.rmtree(tmp_path / "ckpt")
    produce_ids(dev_stack, "eo", produced, 2000, schema_id)
    produced += 2000
    drained = run_spec(binary, s3_spec(dev_stack, tmp_path, s3, available_now=True))
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert "resuming after the table's last commit" in drained.stderr

    table = DeltaTable(f"s3://{BUCKET}/lake/eo", storage_options=s3)
    ids = table.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated ids"
    assert sorted(ids) == list(range(produced))
    history = table.history()
    batches = sorted(json.loads(h["tributary"])["batchId"] if isinstance(h["tributary"], str) else h["tributary"]["batchId"]
                     for h in history if "tributary" in h)
    assert len(batches) >= 10, history[:2]
    assert batches == list(range(len(batches))), f"one commit per batch id: {batches}"
    assert any(h["operation"] == "OPTIMIZE" for h in history), "no compaction commit on S3"
    assert held_offsets(verify(s3_spec(dev_stack, tmp_path, s3, available_now=True))) == produced


def test_s3_without_a_safe_commit_mode_is_refused(binary, tmp_path):
    spec = tmp_path / "unsafe.yaml"
    spec.write_text("""pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table:
  uri: s3://bucket/t
  storage_options: {conditional_put: disabled}
checkpoint: {location: /c}
""")
    out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "table.storage_options: conditional_put: disabled leaves concurrent commits unsafe" in out.stdout + out.stderr
    spec.write_text(spec.read_text().replace("{conditional_put: disabled}",
                                             "{conditional_put: disabled, AWS_S3_ALLOW_UNSAFE_RENAME: 'true'}"))
    out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # deltalake 1.x has no DynamoDB log store: a lock would protect nothing.
    spec.write_text(spec.read_text().replace("AWS_S3_ALLOW_UNSAFE_RENAME: 'true'",
                                             "AWS_S3_LOCKING_PROVIDER: dynamodb, DELTA_DYNAMO_TABLE_NAME: locks"))
    out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "AWS_S3_LOCKING_PROVIDER: dynamodb is not supported" in out.stdout + out.stderr


def s3_objects(options, prefix):
    client = boto3.client("s3", endpoint_url=options["AWS_ENDPOINT_URL"], region_name=options["AWS_REGION"],
                          aws_access_key_id=options["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=options["AWS_SECRET_ACCESS_KEY"])
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return client, keys


def live_keys(table):
    return {u.removeprefix(f"s3://{BUCKET}/") for u in table.file_uris()}


def committed_batches(table):
    out = {}
    for h in table.history():
        if "tributary" in h:
            info = json.loads(h["tributary"]) if isinstance(h["tributary"], str) else h["tributary"]
            out.setdefault(info["batchId"], []).append(info)
    return out


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_s3_checkpoint_lets_an_empty_node_finish_a_crashed_batch_exactly(binary, dev_stack, tmp_path, s3):
    produce_ids(dev_stack, "eo", 0, 3000)
    spec = s3_spec(dev_stack, tmp_path, s3, available_now=True)
    checkpoint = f"s3://{BUCKET}/checkpoints/eo"
    text = spec.read_text().replace(f"'file://{tmp_path / 'ckpt'}'", f"'{checkpoint}'")
    # No compaction: every parquet object must then be a live file of the table.
    text = text.replace("compaction:\n  interval: 2s\n  min_files: 3\n", "compaction:\n  enabled: false\n")
    assert checkpoint in text and "enabled: false" in text
    spec.write_text(text)

    # Batch 2's files are uploaded, its commit never happens.
    crashed = run_spec(binary, spec, env={"TRIBUTARY_CRASH_AT": "after_files@2"})
    assert crashed.returncode != 0 and "aborting at after_files of batch 2" in crashed.stderr, crashed.stderr[-2000:]
    assert not (tmp_path / "ckpt").exists(), "a local checkpoint was written"
    client, keys = s3_objects(s3, "checkpoints/eo/offsets/topic/")
    plan_key = "checkpoints/eo/offsets/topic/00000000000000000002.json"
    assert plan_key in keys, keys
    announced = [k for k in keys if k.startswith("checkpoints/eo/offsets/topic/00000000000000000002.files/")]
    assert announced, "batch 2's files were not announced on S3"
    plan = json.loads(client.get_object(Bucket=BUCKET, Key=plan_key)["Body"].read())
    table = DeltaTable(f"s3://{BUCKET}/lake/eo", storage_options=s3)
    assert sorted(committed_batches(table)) == [0, 1]
    _, data = s3_objects(s3, "lake/eo/")
    orphans = {k for k in data if k.endswith(".parquet")} - live_keys(table)
    assert orphans, "the crashed attempt left no file to clean up"

    # A new process with nothing local: everything comes from S3.
    drained = run_spec(binary, spec)
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert "re-running a planned batch with its recorded offsets" in drained.stderr
    assert "removed data files of a failed attempt" in drained.stderr

    table = DeltaTable(f"s3://{BUCKET}/lake/eo", storage_options=s3)
    ids = table.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated ids"
    assert sorted(ids) == list(range(3000))
    batches = committed_batches(table)
    assert sorted(batches) == list(range(len(batches))) and all(len(v) == 1 for v in batches.values())
    # Batch 2 landed with exactly the offsets recorded before the crash.
    [batch2] = batches[2]
    assert batch2["ranges"] == plan["ranges"]["ranges"] and batch2["ranges"]
    _, data = s3_objects(s3, "lake/eo/")
    on_s3 = {k for k in data if k.endswith(".parquet")}
    assert on_s3 == live_keys(table), f"unreferenced files: {sorted(on_s3 - live_keys(table))[:5]}"
    assert held_offsets(verify(spec)) == 3000


def test_s3_checkpoint_without_conditional_put_is_refused(binary, tmp_path):
    spec = tmp_path / "ckpt.yaml"
    spec.write_text("""pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table: {uri: s3://bucket/t}
checkpoint: {location: s3://bucket/checkpoints/p}
""")
    out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    spec.write_text(spec.read_text().replace(
        "checkpoint: {location: s3://bucket/checkpoints/p}",
        "checkpoint: {location: s3://bucket/checkpoints/p, storage_options: {conditional_put: disabled, AWS_S3_ALLOW_UNSAFE_RENAME: 'true'}}"))
    out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "checkpoint.storage_options: an s3:// checkpoint needs conditional put" in out.stdout + out.stderr


def logged_adds(options, prefix):
    """Every path an `add` of any commit in the log names (URI-decoded)."""
    client, keys = s3_objects(options, f"{prefix}/_delta_log/")
    adds = set()
    for key in sorted(k for k in keys if k.endswith(".json")):
        for line in client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines():
            action = json.loads(line)
            if "add" in action:
                adds.add(f"{prefix}/" + urllib.parse.unquote(action["add"]["path"]))
    return adds


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_ambiguous_commits_keep_their_files(binary, dev_stack, tmp_path, s3):
    """A log PUT that lands but is answered 503: object_store retries it, the
    retry is refused (412) as a conflict with the commit itself. Appends and
    compactions must recognise their own commit instead of deleting its files.
    Meanwhile S3 throttles (SlowDown) data-file uploads and log reads."""
    moto_port = int(s3["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = FaultProxy(moto_port, [
        Rule("PUT", LOG_COMMIT, every=1, mode="after", body_contains=b'"operation":"OPTIMIZE"'),
        Rule("PUT", LOG_COMMIT, every=2, mode="after"),
        Rule("PUT", LOG_COMMIT, every=5, mode="before"),
        Rule("PUT", r"\.parquet$", every=3, mode="before", code="SlowDown"),
        Rule("GET", r"/_delta_log/", every=7, mode="before", code="SlowDown"),
    ])
    via_proxy = dict(s3, AWS_ENDPOINT_URL=proxy.endpoint)
    try:
        schema_id = produce_ids(dev_stack, "eo", 0, 2000)
        proc = start(binary, s3_spec(dev_stack, tmp_path, via_proxy, available_now=False))
        produced = 2000
        for _ in range(16):
            produce_ids(dev_stack, "eo", produced, 300, schema_id)
            produced += 300
            time.sleep(0.5)
            assert proc.poll() is None, log_of(proc)[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_of(proc)[-3000:]
        drained = run_spec(binary, s3_spec(dev_stack, tmp_path, via_proxy, available_now=True))
        assert drained.returncode == 0, drained.stderr[-3000:]
    finally:
        proxy.stop()
    optimize, appends, failed, throttled_puts, throttled_gets = proxy.rules
    assert len(appends.injected) >= 3, f"too few ambiguous appends: {appends.injected}"
    assert optimize.injected, "no compaction commit was made ambiguous"
    assert failed.injected and throttled_puts.injected and throttled_gets.injected
    assert "answered with an error but had landed" in log_of(proc)

    # Every file any commit added is still there (nothing compaction replaced
    # was vacuumed: the retention is an hour), and every id is there once.
    _, keys = s3_objects(s3, "lake/eo/")
    missing = logged_adds(s3, "lake/eo") - set(keys)
    assert not missing, f"files of committed versions were deleted: {sorted(missing)[:5]}"
    table = DeltaTable(f"s3://{BUCKET}/lake/eo", storage_options=s3)
    ids = table.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated ids"
    assert sorted(ids) == list(range(produced))
    batches = committed_batches(table)
    assert sorted(batches) == list(range(len(batches))) and all(len(v) == 1 for v in batches.values())
    assert held_offsets(verify(s3_spec(dev_stack, tmp_path, s3, available_now=True))) == produced
