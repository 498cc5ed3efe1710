"""The admin server (/healthz, /readyz, /metrics, /progress), `tributary status`,
and the dashboard and alert files, checked against a real ingest."""

import json
import re
import signal
import subprocess
import time
import urllib.request

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, confluent, duck, write_spec

SCHEMA = {"type": "record", "name": "Op", "fields": [{"name": "id", "type": "long"}]}
GOOD, BAD, LATE = 5000, 10, 100

COMPACTION_METRICS = ("tributary_compaction_", "tributary_vacuum_", "tributary_table_files")
REPUBLISH_METRICS = ("tributary_republish_",)
# With run --verify-every only (test_verify checks those).
VERIFY_METRICS = ("tributary_verify_",)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


def admin_url(log, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        m = re.search(r"admin server listening on (http://127\.0\.0\.1:\d+)", log.read_text() if log.exists() else "")
        if m:
            return m.group(1)
        time.sleep(0.1)
    raise AssertionError("no admin address in the log: " + log.read_text()[-2000:])


def scrape(url):
    """Samples by (name, labels) from a real Prometheus text parser."""
    _, text = get(f"{url}/metrics")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples, name):
    return sum(v for (n, _), v in samples.items() if n == name)


@pytest.mark.parametrize("dev_stack", [["ops:3"]], indirect=True)
def test_metrics_progress_status_and_dashboards(binary, dev_stack, tmp_path):
    schema_id = dev_stack.register("ops-value", SCHEMA)
    messages = [(None, confluent(schema_id, SCHEMA, {"id": i}), None) for i in range(GOOD)]
    messages += [(None, b"not avro", None) for _ in range(BAD)]
    dev_stack.produce("ops", messages)
    table, dead_table = tmp_path / "lake" / "ops", tmp_path / "lake" / "ops_dead_letters"
    spec = write_spec(tmp_path / "ops.yaml", pipeline="ops", bootstrap=dev_stack.bootstrap, topic="ops",
                      registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt")
    spec.write_text(spec.read_text().replace("  available_now: true", "  available_now: false\n  max_offsets_per_trigger: 1000")
                    .replace("interval: 500ms", "interval: 200ms"))
    log = tmp_path / "run.log"
    proc = subprocess.Popen([str(binary), "run", "--spec", str(spec), "--admin-addr", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        url = admin_url(log)
        # Lag comes from librdkafka's statistics (every second) and is reported
        # with each batch: keep the ingest going until a batch carries it.
        time.sleep(1.5)
        dev_stack.produce("ops", [(None, confluent(schema_id, SCHEMA, {"id": i}), None) for i in range(GOOD, GOOD + LATE)])
        deadline = time.time() + 90
        samples = {}
        while time.time() < deadline:
            samples = scrape(url)
            if (total(samples, "tributary_rows_written_total") >= GOOD + LATE
                    and total(samples, "tributary_dead_letters_total") >= BAD
                    and any(n == "tributary_consumer_lag" for n, _ in samples)):
                break
            time.sleep(0.3)
        assert get(f"{url}/healthz")[0] == 200
        assert get(f"{url}/readyz")[0] == 200
        # The container health check command agrees.
        admin_addr = url.removeprefix("http://")
        check = subprocess.run([str(binary), "healthcheck", "--admin-addr", admin_addr], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        # Counters agree with what the tables hold.
        con = duck()
        rows = con.execute(f"select count(*) from delta_scan('{table}')").fetchone()[0]
        dead = con.execute(f"select count(*) from delta_scan('{dead_table}')").fetchone()[0]
        assert rows == GOOD + LATE and dead == BAD
        assert total(samples, "tributary_rows_written_total") == rows
        assert total(samples, "tributary_dead_letters_total") == dead
        assert total(samples, "tributary_rows_in_total") == GOOD + LATE + BAD
        assert total(samples, "tributary_consumer_lag") == 0
        assert total(samples, "tributary_batch_step_seconds_count") > 0
        # Every record read has a Kafka timestamp, and so a latency.
        assert total(samples, "tributary_event_to_commit_seconds_count") == GOOD + LATE + BAD
        assert sum(v for (n, labels), v in samples.items()
                   if n == "tributary_event_to_commit_seconds_bucket" and ("le", "+Inf") in labels) == GOOD + LATE + BAD

        # /progress: valid against the published schema, and the same numbers as the commit info.
        _, body = get(f"{url}/progress")
        events = json.loads(body)
        schema = json.loads((ROOT / "docs/progress-schema.json").read_text())
        for e in events:
            jsonschema.validate(e, schema)
        assert sum(e["numOutputRows"] for e in events) == GOOD + LATE
        for e in (e for e in events if e["numInputRows"]):
            lat = e["eventToCommit"]
            assert 0 <= lat["p50Ms"] <= lat["p95Ms"] <= lat["p99Ms"] <= lat["maxMs"] < 120_000, lat
        infos = {}
        for f in sorted((table / "_delta_log").glob("*.json")):
            for line in f.read_text().splitlines():
                a = json.loads(line)
                if "commitInfo" in a and "tributary" in a["commitInfo"]:
                    infos[a["commitInfo"]["tributary"]["batchId"]] = a["commitInfo"]["tributary"]
        assert [e["batchId"] for e in events] == sorted(infos)
        for e in events:
            ranges = infos[e["batchId"]]["ranges"]
            assert e["sources"][0]["startOffset"]["ops"] == {str(r["partition"]): r["start"] for r in ranges}
            assert e["sources"][0]["endOffset"]["ops"] == {str(r["partition"]): r["end"] for r in ranges}

        # Every metric the dashboard and the alerts name exists in this scrape.
        names = {n for n, _ in samples}
        dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        rules = yaml.safe_load((ROOT / "docs/alerts.yaml").read_text())
        exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
        named = {m for e in exprs for m in re.findall(r"tributary_[a-z_]+", e)}
        # Compaction metrics appear after a pass (test_compaction checks those),
        # republish metrics with a republish section (test_republish does),
        # verify metrics with --verify-every (test_verify does).
        named = {m for m in named if not m.startswith(COMPACTION_METRICS + REPUBLISH_METRICS + VERIFY_METRICS)}
        assert named and named <= names, f"not exported: {sorted(named - names)}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    check = subprocess.run([str(binary), "healthcheck", "--admin-addr", admin_addr], capture_output=True, text=True, timeout=30)
    assert check.returncode == 1 and "unhealthy" in check.stderr

    # `status --json` from the table, the checkpoint and the broker.
    status = subprocess.run([str(binary), "status", "--spec", str(spec), "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    [group] = report["groups"]
    assert group["group"] == "topic"
    assert group["committedBatch"] == max(infos)
    assert group["endOffsets"] == group["latestOffsets"] == {str(k): v for k, v in infos[max(infos)]["endOffsets"].items()}
    assert group["lag"] == 0 and report["lag"] == 0
    assert report["deadLetters"] == BAD
    text = subprocess.run([str(binary), "status", "--spec", str(spec)], capture_output=True, text=True, timeout=60)
    assert f"last committed batch {max(infos)}" in text.stdout and "dead letters 10" in text.stdout


def test_status_of_a_pipeline_that_never_ran_creates_nothing(binary, tmp_path):
    spec = write_spec(tmp_path / "s.yaml", pipeline="s", bootstrap="127.0.0.1:1", topic="t",
                      registry="http://127.0.0.1:1", table=tmp_path / "lake" / "t", checkpoint=tmp_path / "c")
    spec.write_text(spec.read_text().replace(
        "    topic: t\n", "    topic: t\n    properties: {socket.connection.setup.timeout.ms: '2000'}\n"))
    result = subprocess.run([str(binary), "status", "--spec", str(spec), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["table"]["version"] is None and report["groups"][0]["committedBatch"] is None
    assert report["brokerError"], "nothing answers at 127.0.0.1:1"
    assert not (tmp_path / "lake").exists() and not (tmp_path / "c").exists()


def test_admin_server_refuses_non_loopback_addresses(binary, tmp_path):
    spec = write_spec(tmp_path / "s.yaml", pipeline="s", bootstrap="127.0.0.1:1", topic="t",
                      registry="http://127.0.0.1:1", table=tmp_path / "t", checkpoint=tmp_path / "c")
    refused = subprocess.run([str(binary), "run", "--spec", str(spec), "--admin-addr", "0.0.0.0:0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "refusing to serve the admin endpoints on 0.0.0.0:0" in refused.stderr
    help_text = subprocess.run([str(binary), "run", "--help"], capture_output=True, text=True).stdout
    assert "[default: 127.0.0.1:9464]" in help_text


@pytest.mark.parametrize("dev_stack", [["ready:2"]], indirect=True)
def test_readyz_waits_until_every_group_caught_up(binary, dev_stack, tmp_path):
    """Not ready until the pipeline's group has finished a batch: a registry
    outage holds the first batch back, and /readyz says why meanwhile."""
    schema_id = dev_stack.register("ready-value", SCHEMA)
    dev_stack.produce("ready", [(None, confluent(schema_id, SCHEMA, {"id": i}), None) for i in range(300)])
    table = tmp_path / "lake" / "ready"
    spec = write_spec(tmp_path / "ready.yaml", pipeline="ready", bootstrap=dev_stack.bootstrap, topic="ready",
                      registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt")
    spec.write_text(spec.read_text().replace("  available_now: true", "  available_now: false"))
    urllib.request.urlopen(urllib.request.Request(f"{dev_stack.registry}/_dev/registry/outage/8", method="POST",
                                                  data=b""), timeout=10).read()
    log = tmp_path / "run.log"
    proc = subprocess.Popen([str(binary), "run", "--spec", str(spec), "--admin-addr", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        url = admin_url(log)
        answers = []
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                status, body = get(f"{url}/readyz")
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read().decode()
            answers.append((status, body.strip()))
            if status == 200:
                break
            time.sleep(0.2)
        assert answers[-1][0] == 200, answers[-5:]
        unready = [body for status, body in answers if status == 503]
        assert any("ready/topic: catching up" in body for body in unready), unready[:5]
        # Ready means a batch landed: the table holds the records.
        assert duck().execute(f"select count(*) from delta_scan('{table}')").fetchone()[0] == 300
        # Liveness said alive all along.
        assert get(f"{url}/healthz")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
