"""Fixtures: the real `tributary` binary, Apache Kafka (a KRaft broker of its
own for each test, kafka_cluster.py) beside the development schema registry
(`tributary dev-stack --without-kafka`, a separate process), an independent
Avro encoder (fastavro) and Kafka producer (confluent-kafka), and independent
Delta readers (DuckDB's delta extension, Python deltalake)."""

import base64
import io
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import urllib.request

import duckdb
import fastavro
import pytest
from confluent_kafka import Producer

from kafka_cluster import KafkaCluster

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    """A loopback port nothing listens on (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def binary():
    path = os.environ.get("TRIBUTARY_BIN")
    assert path and os.path.exists(path), "set TRIBUTARY_BIN to the built tributary binary (scripts/test does)"
    return path


class DevStack:
    """The development registry, and the Kafka cluster beside it (`kafka`:
    a KafkaCluster whose topics are created here; None for a registry alone)."""

    def __init__(self, binary, topics, registry_basic_auth=None, kafka=None):
        args = [binary, "dev-stack", "--without-kafka"]
        if registry_basic_auth:
            args += ["--registry-basic-auth", registry_basic_auth]
        self.registry_basic_auth = registry_basic_auth
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert line, "dev-stack printed no addresses"
        self.registry = json.loads(line)["schema_registry"]
        self.kafka = kafka
        self.bootstrap = kafka.bootstrap if kafka else None
        if kafka:
            kafka.create_topics(topics)

    def register(self, subject, schema, references=None):
        payload = {"schema": json.dumps(schema)}
        if references:
            payload["references"] = references
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/vnd.schemaregistry.v1+json"}
        if self.registry_basic_auth:
            headers["Authorization"] = "Basic " + base64.b64encode(self.registry_basic_auth.encode()).decode()
        req = urllib.request.Request(f"{self.registry}/subjects/{subject}/versions", data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["id"]

    def producer(self):
        return Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5})

    def produce(self, topic, messages):
        """Produces (key, value, partition) tuples; returns their (partition, offset) in order."""
        p = self.producer()
        placed = [None] * len(messages)
        errors = []

        def report(i):
            def cb(err, msg):
                if err:
                    errors.append(err)
                else:
                    placed[i] = (msg.partition(), msg.offset())
            return cb

        for i, (key, value, partition) in enumerate(messages):
            kwargs = {"key": key, "value": value, "on_delivery": report(i)}
            if partition is not None:
                kwargs["partition"] = partition
            p.produce(topic, **kwargs)
            p.poll(0)
        assert p.flush(30) == 0
        assert not errors, errors
        return placed

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def kafka(tmp_path):
    """A one-node Apache Kafka cluster of this test's own."""
    cluster = KafkaCluster(tmp_path / "kafka")
    yield cluster
    cluster.close()


@pytest.fixture
def dev_stack(binary, kafka, request):
    """Apache Kafka with the topics the test names (`indirect` parameter,
    NAME:PARTITIONS[:compact]) and the development registry."""
    topics = getattr(request, "param", [])
    stack = DevStack(binary, topics, kafka=kafka)
    yield stack
    stack.stop()


def confluent(schema_id, schema, record):
    """Confluent wire format, encoded by fastavro (independent of Tributary)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


def spark_batches(start, until, limit):
    """The (start, end) offsets of each batch that drains `start` to `until`
    (partition -> offset) under `maxOffsetsPerTrigger` = `limit`, by the rule
    of Spark's Kafka source (KafkaMicroBatchStream.rateLimit): each
    partition's share of the limit is in proportion to its lag, rounded down,
    or up when under one record, so a batch may pass the limit by a record
    per partition."""
    batches, begin = [], dict(start)
    while any(begin[p] < until[p] for p in until):
        sizes = {p: until[p] - begin[p] for p in until if until[p] - begin[p] > 0}
        total = float(sum(sizes.values()))
        end = {}
        for p in until:
            if p not in sizes:
                end[p] = until[p]
                continue
            prorate = limit * (sizes[p] / total)
            share = math.ceil(prorate) if prorate < 1 else math.floor(prorate)
            end[p] = min(until[p], begin[p] + share)
        batches.append((begin, end))
        begin = end
    return batches


def read_ranges(events, topic):
    """Each progress event's {partition: (start, end)} of `topic`, the
    partitions it read records of."""
    ranges = []
    for e in events:
        (source,) = [s for s in e["sources"] if topic in s["startOffset"]]
        start, end = source["startOffset"][topic], source["endOffset"][topic]
        ranges.append({p: (start[p], end[p]) for p in start if end[p] > start[p]})
    return ranges


def spark_ranges(events, topic, limit):
    """The ranges Spark's rule (`spark_batches`) plans for the backlog these
    events drained from their first start to their last end."""
    first, last = {}, {}
    for batch in read_ranges(events, topic):
        for p, (start, end) in batch.items():
            first.setdefault(p, start)
            last[p] = end
    return [{p: (s[p], e[p]) for p in s if e[p] > s[p]} for s, e in spark_batches(first, last, limit)]


def duck():
    """DuckDB with the delta extension from the duckdb-ext-delta wheel."""
    import duckdb_ext

    package = pathlib.Path(list(duckdb_ext.__path__)[0])  # a namespace package: no __file__
    ext = package / "extensions" / f"v{duckdb.__version__}" / "linux_amd64" / "delta.duckdb_extension"
    if not ext.exists():
        found = list(package.rglob("delta.duckdb_extension"))
        assert found, "delta.duckdb_extension not found in duckdb-ext-delta"
        ext = found[0]
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{ext}'")
    con.execute("SET TimeZone = 'UTC'")
    return con


def run_spec(binary, spec_path, env=None, timeout=180, extra=()):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [binary, "run", "--spec", str(spec_path), "--admin-addr", "127.0.0.1:0", *extra],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_spec(path, *, pipeline, bootstrap, topic, registry, table, checkpoint, partition_by=(), extra=""):
    parts = ", ".join(f"'{p}'" for p in partition_by)
    path.write_text(
        f"""pipeline: {pipeline}
source:
  kafka:
    bootstrap_servers: '{bootstrap}'
    topic: {topic}
  schema_registry:
    url: '{registry}'
table:
  uri: 'file://{table}'
  partition_by: [{parts}]
trigger:
  available_now: true
  interval: 500ms
checkpoint:
  location: 'file://{checkpoint}'
{extra}"""
    )
    return path
