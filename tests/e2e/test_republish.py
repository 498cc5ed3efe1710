"""The republish sink against Apache Kafka: the fraud-alert example.
Payments land in a Delta table; suspicious ones are republished to an
`alerts` topic in Kafka transactions, read back by a `read_committed`
consumer (confluent-kafka) and decoded with the schema the sink registered
(fastavro). The broker's transaction coordinator isolates open and aborted
transactions and fences zombies, which librdkafka's mock cluster does not.
"""

import io
import json
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request

import fastavro
import pyarrow.parquet as pq
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import ROOT, confluent, write_spec
from test_exactly_once import held_offsets, log_of, start, verify

PAYMENT = {"type": "record", "name": "Payment", "namespace": "example.fraud", "fields": [
    {"name": "payment_id", "type": "long"},
    {"name": "account", "type": "string"},
    {"name": "amount_cents", "type": "long"},
    {"name": "is_suspicious", "type": "boolean"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
]}


def payment(n):
    return {"payment_id": n, "account": f"acct-{n % 17}", "amount_cents": (n * 7919) % 500_000,
            "is_suspicious": n % 7 == 0, "ts": 1_767_225_600_000 + n * 1000}


def fraud_spec(stack, tmp_path, republish_enabled, compaction="compaction:\n  enabled: false\n", republish_extra=""):
    spec = write_spec(tmp_path / "payments.yaml", pipeline="payments", bootstrap=stack.bootstrap, topic="payments",
                      registry=stack.registry, table=tmp_path / "lake" / "payments", checkpoint=tmp_path / "ckpt")
    text = spec.read_text().replace("  available_now: true", "  available_now: false\n  max_offsets_per_trigger: 300")
    text = text.replace("interval: 500ms", "interval: 200ms")
    text += compaction
    text += f"""republish:
  enabled: {str(republish_enabled).lower()}
  topic: alerts
  filter: is_suspicious = true AND amount_cents >= 0
  columns: [payment_id, account, amount_cents, ts]
  key: account
  format: avro
  interval: 200ms
{republish_extra}"""
    spec.write_text(text)
    return spec


def produce_payments(stack, schema_id, start, count):
    stack.produce("payments", [(str(n).encode(), confluent(schema_id, PAYMENT, payment(n)), None)
                               for n in range(start, start + count)])


def read_alerts(stack, expected, timeout=90, topic="alerts"):
    """Every committed alert (read_committed), decoded with the registered schema."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"check-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    schemas, alerts = {}, []
    deadline = time.time() + timeout
    idle_since = None
    while time.time() < deadline:
        msgs = consumer.consume(500, timeout=0.5)
        for msg in msgs:
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value[0] == 0, "not Confluent framing"
            schema_id = int.from_bytes(value[1:5], "big")
            if schema_id not in schemas:
                with urllib.request.urlopen(f"{stack.registry}/schemas/ids/{schema_id}", timeout=10) as resp:
                    schemas[schema_id] = fastavro.parse_schema(json.loads(json.load(resp)["schema"]))
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), schemas[schema_id])
            alerts.append((msg.key(), record))
        if len(alerts) >= expected:
            # Anything beyond the expected count would be a duplicate: keep reading a little.
            idle_since = idle_since or time.time()
            if time.time() - idle_since > 2:
                break
    consumer.close()
    return alerts


def versions_of(table):
    """payment_id -> the table version whose dataChange=true add holds it."""
    out = {}
    for f in sorted((table / "_delta_log").glob("*.json")):
        version = int(f.stem)
        for line in f.read_text().splitlines():
            action = json.loads(line)
            add = action.get("add")
            if add and add.get("dataChange"):
                for pid in pq.read_table(table / add["path"], columns=["payment_id"]).column(0).to_pylist():
                    assert pid not in out, f"payment {pid} added twice"
                    out[pid] = version
    return out


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def progress_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def table_version(table):
    return max((int(f.stem) for f in (table / "_delta_log").glob("*.json")), default=-1)


def assert_alerts_exactly_once_in_version_order(alerts, table, total):
    suspicious = sorted(n for n in range(total) if payment(n)["is_suspicious"])
    ids = [a["payment_id"] for _, a in alerts]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicated alerts"
    assert sorted(ids) == suspicious
    versions = versions_of(table)
    order = [versions[i] for i in ids]
    assert order == sorted(order), "alerts out of table-version order"
    for key, alert in alerts:
        assert key == alert["account"].encode()
        expected = payment(alert["payment_id"])
        assert set(alert) == {"payment_id", "account", "amount_cents", "ts"}
        assert alert["amount_cents"] == expected["amount_cents"]


def republisher(binary, spec, progress, log, env=None):
    return subprocess.Popen([binary, "republish", "--spec", str(spec), "--progress-json", str(progress)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)


@pytest.mark.parametrize("dev_stack", [["payments:4", "alerts:1"]], indirect=True)
def test_republisher_killed_twenty_times_beside_ingest_and_compaction(binary, dev_stack, tmp_path):
    """SIGKILL at random points, within versions too: a version's rows are
    split into transactions of 7 records, each recording where it stopped.
    The sink creates its (compacted) progress topic itself."""
    schema_id = dev_stack.register("payments-value", PAYMENT)
    spec = fraud_spec(dev_stack, tmp_path, republish_enabled=False,
                      compaction="compaction:\n  interval: 1s\n  min_files: 2\n",
                      republish_extra="  max_transaction_records: 7\n")
    table = tmp_path / "lake" / "payments"
    ingest = start(binary, spec)
    produced = 0
    done = threading.Event()

    def keep_producing():
        nonlocal produced
        while not done.is_set():
            produce_payments(dev_stack, schema_id, produced, 150)
            produced += 150
            time.sleep(0.2)

    producer = threading.Thread(target=keep_producing)
    producer.start()
    progress = tmp_path / "republish.jsonl"
    rng = random.Random(7)
    kills = 0
    try:
        while kills < 22:
            log = tmp_path / f"republish-{kills}.log"
            sink = republisher(binary, spec, progress, log)
            time.sleep(rng.uniform(0.5, 2.5))
            assert sink.poll() is None, log.read_text()[-3000:]
            sink.send_signal(signal.SIGKILL)
            sink.wait()
            kills += 1
            assert ingest.poll() is None, log_of(ingest)[-3000:]
    finally:
        done.set()
        producer.join()
    assert len({p["version"] for p in progress_lines(progress)}) >= 5, "the killed republishers published almost nothing"
    assert dev_stack.kafka.topic_config("tributary-republish-progress")["cleanup.policy"] == "compact"

    # Let ingest drain, then a last republisher catches up to the final version.
    wait_for(lambda: len(versions_of(table)) == produced, 120, "ingest to drain")
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(60) == 0, log_of(ingest)[-3000:]
    final_version = table_version(table)
    last_log = tmp_path / "republish-last.log"
    last = republisher(binary, spec, progress, last_log)
    try:
        wait_for(lambda: any(p["version"] == final_version for p in progress_lines(progress)), 120,
                 f"version {final_version} to be republished")
    finally:
        last.send_signal(signal.SIGTERM)
        assert last.wait(60) == 0, last_log.read_text()[-3000:]

    history = [json.loads(line) for f in sorted((table / "_delta_log").glob("*.json")) for line in f.read_text().splitlines()]
    assert sum(1 for a in history if a.get("commitInfo", {}).get("operation") == "OPTIMIZE") >= 1, "compaction never ran"
    alerts = read_alerts(dev_stack, expected=sum(1 for n in range(produced) if payment(n)["is_suspicious"]))
    assert_alerts_exactly_once_in_version_order(alerts, table, produced)
    lines = progress_lines(progress)
    assert any(p["transactions"] > 1 for p in lines), "no version was split into several transactions"
    # Compaction's versions were skipped, not republished: each version's
    # progress counts only the rows that version added as new data.
    optimize_versions = {int(f.stem) for f in (table / "_delta_log").glob("*.json")
                         if '"operation":"OPTIMIZE"' in f.read_text()}
    assert optimize_versions and all(p["rowsRead"] == 0 for p in lines if p["version"] in optimize_versions)
    # The table the alerts come from holds every payment's offset once.
    assert held_offsets(verify(spec)) == produced


def ingest_all(binary, spec, table, count):
    """Runs the pipeline until the table holds `count` payments."""
    run = start(binary, spec)
    try:
        wait_for(lambda: table.exists() and len(versions_of(table)) == count, 90, "ingest")
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0, log_of(run)[-3000:]


def republish_to_the_end(binary, spec, table, progress, log):
    """Runs a sink until it published the table's last version; returns its log."""
    final_version = table_version(table)
    sink = republisher(binary, spec, progress, log)
    try:
        wait_for(lambda: any(p["version"] == final_version for p in progress_lines(progress)), 60,
                 f"version {final_version} to be republished: " + log.read_text()[-2000:])
    finally:
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(60) == 0, log.read_text()[-3000:]
    return log.read_text()


@pytest.mark.parametrize("dev_stack", [["payments:2", "alerts:1", "tributary-republish-progress:1:compact"]], indirect=True)
def test_a_zombie_republisher_is_fenced_and_publishes_nothing(binary, dev_stack, tmp_path):
    """A sink frozen (SIGSTOP, as a long GC pause or a network partition
    would) while a second one with the same transactional.id takes over:
    once it wakes, it is fenced, exits 1, and none of its records is seen."""
    schema_id = dev_stack.register("payments-value", PAYMENT)
    spec = fraud_spec(dev_stack, tmp_path, republish_enabled=False, republish_extra="  max_transaction_records: 5\n")
    table = tmp_path / "lake" / "payments"
    ingest = start(binary, spec)
    produce_payments(dev_stack, schema_id, 0, 3000)
    wait_for(lambda: table.exists() and len(versions_of(table)) == 3000, 90, "ingest")

    zombie_progress, zombie_log = tmp_path / "zombie.jsonl", tmp_path / "zombie.log"
    zombie = republisher(binary, spec, zombie_progress, zombie_log)
    wait_for(lambda: len(progress_lines(zombie_progress)) >= 2, 60, "the first sink to publish")
    zombie.send_signal(signal.SIGSTOP)
    frozen_at = len(progress_lines(zombie_progress))

    successor_progress, successor_log = tmp_path / "successor.jsonl", tmp_path / "successor.log"
    successor = republisher(binary, spec, successor_progress, successor_log)
    try:
        wait_for(lambda: any(p["version"] == table_version(table) for p in progress_lines(successor_progress)), 90,
                 "the successor to catch up")
        # New versions for both to see; the zombie wakes up.
        produce_payments(dev_stack, schema_id, 3000, 1500)
        wait_for(lambda: len(versions_of(table)) == 4500, 90, "ingest")
        zombie.send_signal(signal.SIGCONT)
        assert zombie.wait(90) == 1, zombie_log.read_text()[-3000:]
        assert "republisher fenced" in zombie_log.read_text(), zombie_log.read_text()[-3000:]
        wait_for(lambda: any(p["version"] == table_version(table) for p in progress_lines(successor_progress)), 90,
                 "the successor to publish the new versions")
    finally:
        for proc in (successor, ingest):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
    # Whatever the zombie had in flight when it froze was aborted by the
    # successor's init; after it woke, it completed no version.
    assert len(progress_lines(zombie_progress)) <= frozen_at + 1
    alerts = read_alerts(dev_stack, expected=sum(1 for n in range(4500) if payment(n)["is_suspicious"]))
    assert_alerts_exactly_once_in_version_order(alerts, table, 4500)


@pytest.mark.parametrize("dev_stack", [["payments:2", "alerts:1", "tributary-republish-progress:1:compact"]], indirect=True)
def test_a_restart_resumes_past_another_pipelines_open_transaction(binary, dev_stack, tmp_path):
    """Another pipeline's transaction stays open on the shared progress topic
    (it hangs): `read_committed` readers of that topic stop before it, where
    only an older progress record of ours is visible. The sink must resume
    from its newest position: at once from its group offset, or, once that
    has expired, from the progress topic after the other transaction ended."""
    schema_id = dev_stack.register("payments-value", PAYMENT)
    spec = fraud_spec(dev_stack, tmp_path, republish_enabled=False)
    table = tmp_path / "lake" / "payments"
    progress = tmp_path / "republish.jsonl"
    produce_payments(dev_stack, schema_id, 0, 600)
    ingest_all(binary, spec, table, 600)
    republish_to_the_end(binary, spec, table, progress, tmp_path / "sink-1.log")

    other = Producer({"bootstrap.servers": dev_stack.bootstrap, "transactional.id": "another-pipeline",
                      "transaction.timeout.ms": 300000})
    other.init_transactions(30)
    other.begin_transaction()
    other.produce("tributary-republish-progress", key=b"another-pipeline", value=b'{"nextVersion":1}', partition=0)
    other.flush(30)
    try:
        produce_payments(dev_stack, schema_id, 600, 600)
        ingest_all(binary, spec, table, 1200)
        republish_to_the_end(binary, spec, table, progress, tmp_path / "sink-2.log")
        published = len(progress_lines(progress))
        # Restarted while the other transaction is still open: nothing is
        # published again, and new versions follow.
        produce_payments(dev_stack, schema_id, 1200, 600)
        ingest_all(binary, spec, table, 1800)
        started = time.time()
        republish_to_the_end(binary, spec, table, progress, tmp_path / "sink-3.log")
        assert time.time() - started < 60, "the sink waited for the other pipeline's transaction"
        versions = [p["version"] for p in progress_lines(progress)]
        assert len(versions) == len(set(versions)), f"versions published twice: {versions}"
        assert len(versions) > published

        # The group offset expired: the sink falls back to the progress
        # topic, waits until the other transaction ends, then resumes from
        # its newest record there.
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": dev_stack.bootstrap})
        for future in admin.delete_consumer_groups(["tributary-republish-payments"]).values():
            future.result(30)
        produce_payments(dev_stack, schema_id, 1800, 600)
        ingest_all(binary, spec, table, 2400)
        log = tmp_path / "sink-4.log"
        sink = republisher(binary, spec, progress, log)
        try:
            wait_for(lambda: "waiting for it to end" in log.read_text(), 60, "the sink to wait: " + log.read_text()[-2000:])
            assert not any(p["version"] > versions[-1] for p in progress_lines(progress))
            other.abort_transaction(30)
            other = None
            wait_for(lambda: any(p["version"] == table_version(table) for p in progress_lines(progress)), 60,
                     "the sink to publish after the other transaction ended: " + log.read_text()[-2000:])
        finally:
            sink.send_signal(signal.SIGTERM)
            assert sink.wait(60) == 0, log.read_text()[-3000:]
        versions = [p["version"] for p in progress_lines(progress)]
        assert len(versions) == len(set(versions)), f"versions published twice: {versions}"
        alerts = read_alerts(dev_stack, expected=sum(1 for n in range(2400) if payment(n)["is_suspicious"]))
        assert_alerts_exactly_once_in_version_order(alerts, table, 2400)
    finally:
        if other is not None:
            other.abort_transaction(30)


@pytest.mark.parametrize("dev_stack", [["payments:1", "alerts:1", "deleting-progress:1"]], indirect=True)
def test_a_progress_topic_that_can_lose_the_position_is_refused(binary, dev_stack, tmp_path):
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    schema_id = dev_stack.register("payments-value", PAYMENT)
    table = tmp_path / "lake" / "payments"
    produce_payments(dev_stack, schema_id, 0, 300)
    deleting = fraud_spec(dev_stack, tmp_path, republish_enabled=False,
                          republish_extra="  progress_topic: deleting-progress\n")
    ingest_all(binary, deleting, table, 300)
    refused = subprocess.run([binary, "republish", "--spec", str(deleting)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "deleting-progress has cleanup.policy=delete" in refused.stderr, refused.stderr[-2000:]

    # A compacted topic that was set to `delete` for a while, and lost its
    # records meanwhile (DeleteRecords here, as retention would), with the
    # group offsets expired: no position is left.
    spec = fraud_spec(dev_stack, tmp_path, republish_enabled=False)
    progress = tmp_path / "republish.jsonl"
    republish_to_the_end(binary, spec, table, progress, tmp_path / "sink.log")
    admin = AdminClient({"bootstrap.servers": dev_stack.bootstrap})

    def set_policy(policy):
        entry = ConfigEntry("cleanup.policy", policy, incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(ConfigResource.Type.TOPIC, "tributary-republish-progress",
                                  incremental_configs=[entry])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(30)

    set_policy("delete")
    high = Consumer({"bootstrap.servers": dev_stack.bootstrap, "group.id": "watermarks"}).get_watermark_offsets(
        TopicPartition("tributary-republish-progress", 0), timeout=10)[1]
    for future in admin.delete_records([TopicPartition("tributary-republish-progress", 0, high)]).values():
        future.result(30)
    set_policy("compact")
    for future in admin.delete_consumer_groups(["tributary-republish-payments"]).values():
        future.result(30)
    lost = subprocess.run([binary, "republish", "--spec", str(spec)], capture_output=True, text=True, timeout=60)
    assert lost.returncode == 1, lost.stderr[-2000:]
    assert "has lost records" in lost.stderr and "could publish every row again" in lost.stderr, lost.stderr[-2000:]
    alerts = read_alerts(dev_stack, expected=sum(1 for n in range(300) if payment(n)["is_suspicious"]))
    assert_alerts_exactly_once_in_version_order(alerts, table, 300)


@pytest.mark.parametrize("dev_stack", [["payments:2", "alerts:1", "tributary-republish-progress:1:compact"]], indirect=True)
def test_the_sink_inside_run_publishes_and_reports_its_lag(binary, dev_stack, tmp_path):
    from test_admin import admin_url, scrape, total

    schema_id = dev_stack.register("payments-value", PAYMENT)
    spec = fraud_spec(dev_stack, tmp_path, republish_enabled=True)
    # The table keeps each record's Kafka timestamp, so the sink measures
    # its latency from there (not from `ts`, which is months old).
    spec.write_text(spec.read_text().replace("  schema_registry:\n", "  columns:\n    timestamp: kafka_ts\n  schema_registry:\n"))
    table = tmp_path / "lake" / "payments"
    produced_at = time.time()
    produce_payments(dev_stack, schema_id, 0, 900)
    run = start(binary, spec)
    try:
        url = admin_url(run.log)
        wait_for(lambda: table.exists() and len(versions_of(table)) == 900, 60, "ingest")
        final_version = table_version(table)
        wait_for(lambda: total(scrape(url), "tributary_republish_last_version") == final_version, 60,
                 "the sink to publish the last version")
        samples = scrape(url)
        assert total(samples, "tributary_republish_lag_versions") == 0
        assert total(samples, "tributary_republish_rows_total") == sum(1 for n in range(900) if payment(n)["is_suspicious"])
        assert total(samples, "tributary_republish_failures_total") == 0
        # Every published row's Kafka timestamp to its transaction's commit.
        suspicious = sum(1 for n in range(900) if payment(n)["is_suspicious"])
        count = total(samples, "tributary_republish_event_to_publish_seconds_count")
        assert count == suspicious, count
        mean = total(samples, "tributary_republish_event_to_publish_seconds_sum") / count
        assert 0 < mean <= time.time() - produced_at, mean
        within_an_hour = [v for (name, labels), v in samples.items()
                          if name == "tributary_republish_event_to_publish_seconds_bucket" and float(dict(labels)["le"]) == 3600]
        assert within_an_hour == [suspicious], within_an_hour
        metrics = {name for name, _ in samples}
        # Every republish metric the alerts name is exported.
        rules = yaml.safe_load((ROOT / "docs/alerts.yaml").read_text())
        named = {m for g in rules["groups"] for r in g["rules"]
                 for m in re.findall(r"tributary_republish_[a-z_]+", r["expr"])}
        assert named and named <= metrics, sorted(named - metrics)
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0, log_of(run)[-3000:]
    alerts = read_alerts(dev_stack, expected=sum(1 for n in range(900) if payment(n)["is_suspicious"]))
    assert_alerts_exactly_once_in_version_order(alerts, table, 900)
    # The subject the sink registered holds exactly the published columns.
    with urllib.request.urlopen(f"{dev_stack.registry}/subjects/alerts-value/versions/latest", timeout=10) as resp:
        registered = json.loads(json.load(resp)["schema"])
    assert [f["name"] for f in registered["fields"]] == ["payment_id", "account", "amount_cents", "ts"]


def test_the_sink_inside_run_publishes_each_commit_without_waiting_for_its_interval(binary, dev_stack, tmp_path):
    from test_admin import admin_url, scrape, total

    schema_id = dev_stack.register("payments-value", PAYMENT)
    spec = fraud_spec(dev_stack, tmp_path, republish_enabled=True)
    # The sink's own poll would not come within the test: only the
    # pipeline's commits can wake it.
    head, republish = spec.read_text().split("republish:\n")
    spec.write_text(head + "republish:\n" + republish.replace("  interval: 200ms\n", "  interval: 10m\n"))
    table = tmp_path / "lake" / "payments"
    produce_payments(dev_stack, schema_id, 0, 300)
    run = start(binary, spec)
    try:
        url = admin_url(run.log)
        wait_for(lambda: table.exists() and total(scrape(url), "tributary_republish_last_version") >= 1, 60,
                 "the sink to publish the first version")
        # The sink now waits for its next look; these rows land in later versions.
        produce_payments(dev_stack, schema_id, 300, 600)
        wait_for(lambda: len(versions_of(table)) == 900, 60, "ingest")
        final_version = table_version(table)
        wait_for(lambda: total(scrape(url), "tributary_republish_last_version") == final_version, 30,
                 "the sink to publish the versions committed after its first look")
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0, log_of(run)[-3000:]
    alerts = read_alerts(dev_stack, expected=sum(1 for n in range(900) if payment(n)["is_suspicious"]))
    assert_alerts_exactly_once_in_version_order(alerts, table, 900)


def test_the_fraud_alert_example_in_the_docs_is_a_valid_spec(binary, tmp_path):
    doc = (ROOT / "docs/republish.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    specs = [b for b in blocks if b.startswith("pipeline:")]
    assert specs, "docs/republish.md shows no spec"
    for n, text in enumerate(specs):
        spec = tmp_path / f"doc-{n}.yaml"
        spec.write_text(text)
        out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
                                  "SCHEMA_REGISTRY_URL": "http://registry:8081"})
        assert out.returncode == 0, out.stdout + out.stderr
    # A broken filter is refused with its position in the spec.
    spec = tmp_path / "broken.yaml"
    spec.write_text(specs[0].replace("is_suspicious = true", "is_suspicious = = true"))
    out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
                              "SCHEMA_REGISTRY_URL": "http://registry:8081"})
    assert out.returncode == 1 and "republish.filter: invalid filter" in out.stdout, out.stdout + out.stderr


def test_an_update_mode_table_is_not_republished(binary, tmp_path):
    """A MERGE rewrites unchanged rows into new files: following such a table
    would publish them again, so the spec is refused."""
    spec = tmp_path / "windows.yaml"
    spec.write_text((ROOT / "table-specs/card-activity.yaml").read_text() + """republish:
  topic: card-alerts
""")
    out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "republish: cannot follow an update-mode table" in out.stdout, out.stdout + out.stderr
