"""Tables on S3: moto's S3 server (which implements conditional put) started
on a loopback port; the table is read back from S3 by Python deltalake.

The checkpoint location is local disk (s3:// checkpoints are not built yet):
a replacement instance that lost it resumes from the table's own commit
records, and this test wipes it to prove that."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from deltalake import DeltaTable

from conftest import run_spec
from test_exactly_once import log_of, produce_ids, spec_for, start

BUCKET = "tributary-lake"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_s3_checkpoints_are_refused_until_built(binary, tmp_path):
    spec = tmp_path / "ckpt.yaml"
    spec.write_text("""pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table: {uri: s3://bucket/t}
checkpoint: {location: s3://bucket/checkpoints/p}
""")
    out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True)
    assert out.returncode == 1
    assert 'checkpoint.location: unsupported URI scheme "s3"' in out.stdout + out.stderr
