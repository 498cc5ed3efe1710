"""Exactly-once under crashes, kills, stops, outages and a concurrent instance,
against Apache Kafka: a broker restart, a partition leader killed on a
three-node cluster, partitions added and a topic recreated under a running
pipeline.

Every test ends with the same proof, read by DuckDB's delta extension: every
produced id is in the table exactly once (no duplicates, no gaps), and the
Delta log holds exactly one data commit per batch id of the pipeline."""

import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
from confluent_kafka import Producer
from deltalake import DeltaTable

from conftest import DevStack, confluent, duck, run_spec, write_spec
from kafka_cluster import KafkaCluster

SCHEMA = {"type": "record", "name": "Event", "fields": [
    {"name": "id", "type": "long"}, {"name": "pad", "type": "string"}]}
APP_ID = "eo/topic"


def produce_ids(stack, topic, start, count, schema_id=None):
    schema_id = schema_id or stack.register(f"{topic}-value", SCHEMA)
    stack.produce(topic, [(str(i).encode(), confluent(schema_id, SCHEMA, {"id": i, "pad": "x" * (i % 50)}), None)
                          for i in range(start, start + count)])
    return schema_id


class Producing:
    """Produces ids to `topic` from `first` on, 500 every 0.1 s, until the
    `with` block ends; `count` then is the ids produced in all."""

    def __init__(self, stack, topic, first, schema_id):
        self.count, self.done = first, threading.Event()
        self.thread = threading.Thread(target=self.run, args=(stack, topic, schema_id))

    def run(self, stack, topic, schema_id):
        while not self.done.is_set():
            produce_ids(stack, topic, self.count, 500, schema_id)
            self.count += 500
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def spec_for(stack, tmp_path, max_offsets, available_now=True, interval="500ms"):
    path = write_spec(
        tmp_path / "eo.yaml", pipeline="eo", bootstrap=stack.bootstrap, topic="eo", registry=stack.registry,
        table=tmp_path / "lake" / "eo", checkpoint=tmp_path / "ckpt",
    )
    path.write_text(
        path.read_text()
        .replace("  available_now: true", f"  available_now: {str(available_now).lower()}\n  max_offsets_per_trigger: {max_offsets}")
        .replace("  interval: 500ms", f"  interval: {interval}")
    )
    return path


def start(binary, spec, env=None, extra=()):
    """Starts `tributary run`; its stderr goes to a file, since an unread pipe
    fills up and blocks the process at its next log line."""
    log = spec.parent / f"run-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([binary, "run", "--spec", str(spec), "--admin-addr", "127.0.0.1:0", *extra],
                            env=dict(os.environ, **(env or {})),
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), text=True)
    proc.log = log
    return proc


def log_of(proc):
    return proc.log.read_text()


def verify(spec, env=None):
    """`tributary verify --json` on the spec's table: its report, after
    asserting it found nothing."""
    out = subprocess.run([os.environ["TRIBUTARY_BIN"], "verify", "--spec", str(spec), "--json"],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, **(env or {})))
    assert out.returncode == 0, f"verify: {out.stdout[-3000:]}{out.stderr[-2000:]}"
    report = json.loads(out.stdout)
    assert report["findings"] == [], report["findings"][:5]
    return report


def held_offsets(report):
    """How many offsets the table holds by verify's account, all groups."""
    return sum(end - start for g in report["groups"] for ranges in g["offsets"].values() for start, end in ranges)


def assert_exactly_once(tmp_path, expected_ids, app_ids=(APP_ID,), compacted=False):
    """`compacted`: files that compaction replaced may stay on disk (for
    readers of older versions) until vacuum. Ends with `tributary verify`,
    which must find nothing and account for every record's offset."""
    table = tmp_path / "lake" / "eo"
    con = duck()
    dups = con.execute(f"select id, count(*) from delta_scan('{table}') group by id having count(*) > 1").fetchall()
    assert dups == [], f"duplicated ids: {dups[:10]}"
    ids = [r[0] for r in con.execute(f"select id from delta_scan('{table}') order by id").fetchall()]
    missing = sorted(set(expected_ids) - set(ids))
    assert not missing, f"{len(missing)} ids missing, e.g. {missing[:10]}"
    assert ids == sorted(expected_ids)

    # Exactly one data commit per (group, batch id), batch ids without gaps.
    versions = {}
    for f in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in f.read_text().splitlines()]
        for a in actions:
            if "txn" in a:
                versions.setdefault(a["txn"]["appId"], []).append(a["txn"]["version"])
    assert set(versions) == set(app_ids), f"groups {sorted(versions)}"
    for app_id, vs in versions.items():
        assert vs == list(range(len(vs))), f"txn versions of {app_id}: {vs}"

    # No data file of a failed attempt is left behind.
    live = {os.path.normpath(u.replace("file://", "")) for u in DeltaTable(str(table)).file_uris()}
    on_disk = {os.path.normpath(str(p)) for p in table.rglob("*.parquet") if "_delta_log" not in p.parts}
    assert live <= on_disk, f"live files missing: {sorted(live - on_disk)[:5]}"
    replaced = replaced_by_compaction(table) if compacted else set()
    assert on_disk - live <= replaced, f"unreferenced files: {sorted(on_disk - live - replaced)[:5]}"

    report = verify(tmp_path / "eo.yaml")
    assert held_offsets(report) == len(ids), f"verify accounts for {held_offsets(report)} offsets, the table has {len(ids)} rows"
    assert sorted(g["appId"] for g in report["groups"] if g["commits"]) == sorted(app_ids)


def replaced_by_compaction(table):
    """Files removed (dataChange=false) by OPTIMIZE commits."""
    out = set()
    for f in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in f.read_text().splitlines()]
        if any(a.get("commitInfo", {}).get("operation") == "OPTIMIZE" for a in actions):
            out |= {os.path.normpath(str(table / a["remove"]["path"])) for a in actions if "remove" in a}
    return out


@pytest.mark.parametrize("point", ["after_read", "after_plan", "after_files", "after_commit", "after_offsets"])
@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_crash_at_every_step_boundary(binary, dev_stack, tmp_path, point):
    produce_ids(dev_stack, "eo", 0, 6000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=1000)
    crashed = run_spec(binary, spec, env={"TRIBUTARY_CRASH_AT": f"{point}@2"})
    assert crashed.returncode != 0 and f"aborting at {point} of batch 2" in crashed.stderr, crashed.stderr[-2000:]
    done = run_spec(binary, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_once(tmp_path, range(6000))


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_thirty_random_kills(binary, dev_stack, tmp_path):
    chunk = 40000
    schema_id = produce_ids(dev_stack, "eo", 0, chunk)
    produced = chunk
    spec = spec_for(dev_stack, tmp_path, max_offsets=300)
    rng = random.Random(20261125)
    kills = 0
    while kills < 30:
        proc = start(binary, spec)
        time.sleep(rng.uniform(0.1, 1.2))
        if proc.poll() is not None:
            # It drained the topic before this kill: give it more to do.
            assert proc.returncode == 0, log_of(proc)[-3000:]
            produce_ids(dev_stack, "eo", produced, chunk, schema_id)
            produced += chunk
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    done = run_spec(binary, spec, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_once(tmp_path, range(produced))


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_sigterm_mid_run_then_restart(binary, dev_stack, tmp_path):
    schema_id = produce_ids(dev_stack, "eo", 0, 20000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=500, available_now=False, interval="200ms")
    proc = start(binary, spec)
    time.sleep(1.5)
    produce_ids(dev_stack, "eo", 20000, 2000, schema_id)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log_of(proc)[-3000:]
    assert "stop requested" in log_of(proc)
    drained = run_spec(binary, spec_for(dev_stack, tmp_path, max_offsets=500))
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert_exactly_once(tmp_path, range(22000))


def post(url):
    urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=10).read()


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_broker_restart_in_the_middle_of_a_batch(binary, dev_stack, tmp_path):
    """The only broker is killed (no controlled shutdown) while batches are
    read and committed, and comes back 5 s later."""
    produce_ids(dev_stack, "eo", 0, 20000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=400)
    progress = tmp_path / "progress.jsonl"
    proc = start(binary, spec, extra=("--progress-json", str(progress)))
    wait_until(lambda: len(lines(progress)) >= 3, 60, "three batches")
    dev_stack.kafka.kill(1)
    time.sleep(5)
    assert proc.poll() is None, log_of(proc)[-3000:]
    dev_stack.kafka.start(1)
    assert proc.wait(180) == 0, log_of(proc)[-3000:]
    assert_exactly_once(tmp_path, range(20000))


def test_partition_leader_killed_on_a_three_node_cluster(binary, tmp_path):
    """Replication factor 3, min.insync.replicas 2: the leader of a partition
    dies mid-run; its followers take over and the pipeline carries on."""
    cluster = KafkaCluster(tmp_path / "kafka", nodes=3)
    stack = DevStack(binary, ["eo:4"], kafka=cluster)
    try:
        stack.producer = lambda: Producer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True,
                                           "acks": "all", "linger.ms": 5})
        schema_id = produce_ids(stack, "eo", 0, 20000)
        spec = spec_for(stack, tmp_path, max_offsets=400, available_now=False, interval="200ms")
        progress = tmp_path / "progress.jsonl"
        proc = start(binary, spec, extra=("--progress-json", str(progress)))
        wait_until(lambda: len(lines(progress)) >= 3, 60, "three batches")
        leader = cluster.leader("eo", 0)
        cluster.kill(leader)
        # Records keep arriving while a replica leads.
        produce_ids(stack, "eo", 20000, 5000, schema_id)
        wait_until(lambda: row_count(tmp_path / "lake" / "eo") >= 25000, 180, "every record")
        assert cluster.leader("eo", 0) != leader
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_of(proc)[-3000:]
        assert_exactly_once(tmp_path, range(25000))
    finally:
        stack.stop()
        cluster.close()


def running_after(binary, stack, tmp_path, count):
    """A continuously running pipeline that has ingested `count` records."""
    schema_id = produce_ids(stack, "eo", 0, count)
    spec = spec_for(stack, tmp_path, max_offsets=500, available_now=False, interval="200ms")
    proc = start(binary, spec)
    wait_until(lambda: row_count(tmp_path / "lake" / "eo") >= count, 60, "the first records")
    return schema_id, spec, proc


@pytest.mark.parametrize("dev_stack", [["eo:2"]], indirect=True)
def test_partitions_added_while_running_are_read_from_their_start(binary, dev_stack, tmp_path):
    schema_id, _, proc = running_after(binary, dev_stack, tmp_path, 4000)
    dev_stack.kafka.add_partitions("eo", 4)
    # Produced to the new partitions only, before the pipeline has seen them.
    dev_stack.produce("eo", [(str(i).encode(), confluent(schema_id, SCHEMA, {"id": i, "pad": ""}), 2 + i % 2)
                             for i in range(4000, 6000)])
    try:
        wait_until(lambda: row_count(tmp_path / "lake" / "eo") >= 6000, 60,
                   "the new partitions' records: " + log_of(proc)[-2000:])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_of(proc)[-3000:]
    assert "new partitions of the topic" in log_of(proc)
    # Ids 4000-5999 were only ever in partitions 2 and 3.
    assert_exactly_once(tmp_path, range(6000))


@pytest.mark.parametrize("dev_stack", [["eo:2"]], indirect=True)
def test_a_topic_recreated_under_a_running_pipeline_stops_it_clearly(binary, dev_stack, tmp_path):
    schema_id, spec, proc = running_after(binary, dev_stack, tmp_path, 3000)
    dev_stack.kafka.delete_topic("eo")
    dev_stack.kafka.create_topics(["eo:2"])
    produce_ids(dev_stack, "eo", 3000, 10, schema_id)
    try:
        assert proc.wait(120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_of(proc)
    assert "the offsets of topic eo went backwards" in log, log[-3000:]
    assert "but the topic now ends at" in log, log[-3000:]
    # A restart refuses too, before reading anything.
    again = run_spec(binary, spec, timeout=60)
    assert again.returncode != 0 and "went backwards" in again.stderr, again.stderr[-3000:]
    assert_exactly_once(tmp_path, range(3000))


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_registry_outage_fails_batches_cleanly_then_completes(binary, dev_stack, tmp_path):
    produce_ids(dev_stack, "eo", 0, 5000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=1000)
    # Long enough to exhaust the client's own retries: the batch fails and is retried.
    post(f"{dev_stack.registry}/_dev/registry/outage/12")
    result = run_spec(binary, spec, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "schema registry request failed; retrying" in result.stderr
    assert "batch failed; nothing of it is committed" in result.stderr
    assert_exactly_once(tmp_path, range(5000))


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_two_instances_on_one_group(binary, dev_stack, tmp_path):
    produce_ids(dev_stack, "eo", 0, 60000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=150)
    progress = tmp_path / "first.jsonl"
    first = start(binary, spec, extra=("--progress-json", str(progress)))
    deadline = time.time() + 60
    while not (progress.exists() and progress.read_text().strip()) and time.time() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the first instance finished before the second could start"
    second = start(binary, spec)
    assert first.wait(240) == 0
    assert second.wait(240) == 0
    logs = log_of(first) + log_of(second)
    # They really ran on the group at once: the contention was seen and
    # resolved (a real broker's fetches often give both instances the same
    # batches, and then one finds each batch landed by the other).
    assert "another instance" in logs or "another writer" in logs, logs[-3000:]
    assert_exactly_once(tmp_path, range(60000))


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_lost_checkpoint_resumes_from_the_delta_log(binary, dev_stack, tmp_path):
    """A replacement node with an empty disk: no offsets log, only the table."""
    import shutil

    produce_ids(dev_stack, "eo", 0, 6000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=1000)
    crashed = run_spec(binary, spec, env={"TRIBUTARY_CRASH_AT": "after_commit@3"})
    assert crashed.returncode != 0 and "aborting at after_commit of batch 3" in crashed.stderr
    shutil.rmtree(tmp_path / "ckpt")
    done = run_spec(binary, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after the table's last commit" in done.stderr
    assert_exactly_once(tmp_path, range(6000))


@pytest.mark.parametrize("dev_stack", [["eo:2"]], indirect=True)
def test_a_panic_on_the_reader_thread_stops_the_pipeline_loudly(binary, dev_stack, tmp_path):
    """A panicking reader thread (a decoder bug, say) closes its channel just
    as a drained one does: the run must fail, not end as if the topic were
    drained with its records unread."""
    produce_ids(dev_stack, "eo", 0, 1000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=300)
    panicked = run_spec(binary, spec, env={"TRIBUTARY_CRASH_AT": "panic_in_reader"})
    assert panicked.returncode == 1, panicked.stderr[-3000:]
    assert "the reader thread of the batch loop panicked: TRIBUTARY_CRASH_AT: panicking in the reader thread" \
        in panicked.stderr, panicked.stderr[-3000:]
    done = run_spec(binary, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_once(tmp_path, range(1000))


@pytest.mark.parametrize("dev_stack", [["eo:2"]], indirect=True)
def test_lost_checkpoint_and_expired_log_refuse_to_start(binary, dev_stack, tmp_path):
    """The table knows the group's last batch id (its txn, kept by a log
    checkpoint) but no longer its offsets (the JSON commits expired) and the
    checkpoint location is gone: starting over would skip every batch id the
    table has as landed. The pipeline must refuse, saying what to do."""
    import shutil

    schema_id = produce_ids(dev_stack, "eo", 0, 3000)
    spec = spec_for(dev_stack, tmp_path, max_offsets=1000)
    done = run_spec(binary, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    table = tmp_path / "lake" / "eo"
    delta = DeltaTable(str(table))
    delta.create_checkpoint()
    checkpointed = delta.version()
    for f in (table / "_delta_log").glob("*.json"):
        if int(f.stem) <= checkpointed:
            f.unlink()  # what log retention does once a checkpoint covers them
    shutil.rmtree(tmp_path / "ckpt")
    produce_ids(dev_stack, "eo", 3000, 1000, schema_id)

    refused = run_spec(binary, spec)
    assert refused.returncode != 0
    assert "neither the checkpoint location" in refused.stderr, refused.stderr[-3000:]
    assert "Restore the checkpoint location (offsets/topic/)" in refused.stderr
    assert DeltaTable(str(table)).version() == checkpointed, "the refused start committed something"


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def wait_until(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def row_count(table):
    try:
        return duck().execute(f"select count(*) from delta_scan('{table}')").fetchone()[0]
    except Exception:
        return 0


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_partition_scope_two_instances_then_one_is_killed(binary, dev_stack, tmp_path):
    """state_scope: partition: two instances split the partitions through the
    consumer group; killing one moves its partitions, and their groups, to the other."""
    schema_id = produce_ids(dev_stack, "eo", 0, 40000)
    spec = partition_scope_spec(dev_stack, tmp_path)
    a_events, b_events = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a = start(binary, spec, extra=("--progress-json", str(a_events)))
    b = start(binary, spec, extra=("--progress-json", str(b_events)))
    # The first to join may drain the backlog before the group is split:
    # records keep coming until both instances have committed batches.
    produced = 40000
    deadline = time.time() + 90
    while not (lines(a_events) and lines(b_events)) and time.time() < deadline:
        produce_ids(dev_stack, "eo", produced, 1000, schema_id)
        produced += 1000
        time.sleep(0.5)
    assert lines(a_events) and lines(b_events), "both instances should own partitions: " + log_of(a)[-2000:] + log_of(b)[-2000:]
    a.send_signal(signal.SIGKILL)
    a.wait()
    groups_of_a = {json.loads(line)["group"] for line in lines(a_events)}
    produce_ids(dev_stack, "eo", produced, 20000, schema_id)
    produced += 20000
    table = tmp_path / "lake" / "eo"
    deadline = time.time() + 120
    while row_count(table) < produced and time.time() < deadline:
        time.sleep(0.5)
    b.send_signal(signal.SIGTERM)
    assert b.wait(60) == 0, log_of(b)[-3000:]
    groups_of_b = {json.loads(line)["group"] for line in lines(b_events)}
    assert groups_of_a & groups_of_b, f"b never took over a's groups {groups_of_a}: {groups_of_b}"
    assert groups_of_a | groups_of_b == {"p0", "p1", "p2", "p3"}
    assert_exactly_once(tmp_path, range(produced), app_ids=[f"eo/p{p}" for p in range(4)])


def partition_scope_spec(stack, tmp_path, properties=""):
    spec = spec_for(stack, tmp_path, max_offsets=500, available_now=False, interval="200ms")
    spec.write_text(
        spec.read_text()
        .replace("checkpoint:", "state_scope: partition\ncheckpoint:")
        .replace("    topic: eo\n", "    topic: eo\n    properties: {session.timeout.ms: '6000', heartbeat.interval.ms: '500'"
                 f"{properties}}}\n")
    )
    return spec


def json_events(proc, message):
    """The JSON log events of `proc` whose message starts with `message`."""
    events = []
    for line in log_of(proc).splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if str(event.get("message", "")).startswith(message):
            events.append(event)
    return events


def membership_events(proc, message):
    """The partitions of each of `proc`'s "partitions assigned" or
    "partitions revoked" log events."""
    return [json.loads(e["partitions"]) for e in json_events(proc, message)]


def join_a_second_instance(binary, stack, spec, schema_id, a_events, b_events, extra=()):
    """While ids 20000 on keep arriving: waits until the first instance has
    run every partition of topic `eo`, starts a second and waits until it
    runs some. Returns the second and the ids produced in all."""
    with Producing(stack, "eo", 20000, schema_id) as producing:
        wait_until(lambda: {json.loads(line)["group"] for line in lines(a_events)} == {"p0", "p1", "p2", "p3"}, 90,
                   "the first instance to run every partition")
        b = start(binary, spec, extra=("--progress-json", str(b_events), *extra))
        wait_until(lambda: lines(b_events), 90, "the second instance to take partitions over")
        time.sleep(2)
    return b, producing.count


@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_cooperative_assignment_moves_only_the_partitions_handed_over(binary, dev_stack, tmp_path):
    """With `partition.assignment.strategy: cooperative-sticky` (librdkafka's
    default is eager: every partition revoked, then half assigned back), a
    second instance takes half the partitions and the first gives up only
    those: its other groups run on, never stopped. Records keep arriving
    throughout, and each lands exactly once."""
    schema_id = produce_ids(dev_stack, "eo", 0, 20000)
    spec = partition_scope_spec(dev_stack, tmp_path, properties=", partition.assignment.strategy: cooperative-sticky")
    a_events, b_events = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    json_logs = ("--log-format", "json")
    a = start(binary, spec, extra=("--progress-json", str(a_events), *json_logs))
    b, produced = join_a_second_instance(binary, dev_stack, spec, schema_id, a_events, b_events, extra=json_logs)
    try:
        wait_until(lambda: row_count(tmp_path / "lake" / "eo") >= produced, 180, "every record")
        a_assigned, a_revoked = membership_events(a, "partitions assigned"), membership_events(a, "partitions revoked")
        b_assigned = membership_events(b, "partitions assigned")
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        assert a.wait(60) == 0, log_of(a)[-3000:]
        assert b.wait(60) == 0, log_of(b)[-3000:]
    assert a_assigned == [[0, 1, 2, 3]], a_assigned
    assert len(a_revoked) == 1 and len(a_revoked[0]) == 2, a_revoked
    assert b_assigned == a_revoked, (b_assigned, a_revoked)
    assert {json.loads(line)["group"] for line in lines(b_events)} == {f"p{p}" for p in a_revoked[0]}
    assert_exactly_once(tmp_path, range(produced), app_ids=[f"eo/p{p}" for p in range(4)])


@pytest.mark.parametrize("wait_ms", [None, "0"], ids=["within-the-revoke-wait", "longer-than-the-revoke-wait"])
@pytest.mark.parametrize("dev_stack", [["eo:4"]], indirect=True)
def test_a_rebalance_in_the_middle_of_a_batch(binary, dev_stack, tmp_path, wait_ms):
    """A second instance joins while the first is mid-batch on every
    partition: the group coordinator moves half of them. The first waits for
    its batches in flight before giving them up, or (with the wait cut to
    0 ms) gives them up at once, so both write the same groups for a while."""
    schema_id = produce_ids(dev_stack, "eo", 0, 20000)
    spec = partition_scope_spec(dev_stack, tmp_path)
    a_events, b_events = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    env = {"TRIBUTARY_REVOKE_WAIT_MS": wait_ms} if wait_ms else None
    a = start(binary, spec, env=env, extra=("--progress-json", str(a_events)))
    # Records keep arriving, so every partition has a batch in flight when
    # the second instance joins.
    b, produced = join_a_second_instance(binary, dev_stack, spec, schema_id, a_events, b_events)
    try:
        wait_until(lambda: row_count(tmp_path / "lake" / "eo") >= produced, 180, "every record")
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        assert a.wait(60) == 0, log_of(a)[-3000:]
        assert b.wait(60) == 0, log_of(b)[-3000:]
    assert "partitions revoked" in log_of(a)
    if wait_ms == "0":
        assert "did not stop in time" in log_of(a), log_of(a)[-3000:]
    assert_exactly_once(tmp_path, range(produced), app_ids=[f"eo/p{p}" for p in range(4)])
