"""Apache Kafka (KRaft) brokers for the end-to-end tests, started from the jars
that scripts/lib.sh copies out of Maven Central (`KAFKA_LIBS`).

A cluster of one node serves most tests; three nodes (replication factor 3,
`min.insync.replicas` 2) serve the failover drills. Every node is a combined
broker and controller, so a cluster of three keeps its metadata quorum with
one node down. Each test gets its own cluster, as it got its own mock cluster
before: no topic, group, transactional id or coordinator state leaks from one
test into another."""

import os
import pathlib
import signal
import socket
import subprocess
import time
import uuid

from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

# The broker needs Java 17 or newer (Kafka 4.x).
HEAP = "-Xmx512m -Xms256m"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _libs():
    libs = os.environ.get("KAFKA_LIBS")
    assert libs and pathlib.Path(libs).is_dir(), "set KAFKA_LIBS to the Kafka jars (scripts/test does)"
    return libs


def _java(main, *args, stdout=subprocess.DEVNULL, jit=False):
    log4j = pathlib.Path(__file__).resolve().parents[1] / "kafka" / "log4j2.properties"
    opts = HEAP.split() + ["-XX:+UseG1GC", "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}"]
    if not jit:
        # Test brokers live for seconds: C1 only spares the two cores the C2
        # compiler's work, which would compete with the process under test.
        opts.append("-XX:TieredStopAtLevel=1")
    return [os.environ.get("JAVA", "java"), *opts, "-cp", f"{_libs()}/*", main, *args]


class KafkaCluster:
    def __init__(self, workdir, nodes=1, jit=False):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = list(range(1, nodes + 1))
        self.jit = jit
        self.ports = {n: (_free_port(), _free_port()) for n in self.nodes}
        self.procs = {}
        replication = min(3, nodes)
        voters = ",".join(f"{n}@127.0.0.1:{self.ports[n][1]}" for n in self.nodes)
        cluster_id = _cluster_id()
        formats = []
        for n in self.nodes:
            broker, controller = self.ports[n]
            (self.workdir / f"node{n}").mkdir(exist_ok=True)
            self._props(n).write_text(f"""process.roles=broker,controller
node.id={n}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{broker}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={self.workdir}/node{n}/data
num.partitions=1
default.replication.factor={replication}
min.insync.replicas={max(1, replication - 1)}
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=3
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={max(1, replication - 1)}
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={max(1, replication - 1)}
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
unclean.leader.election.enable=false
""")
            formats.append(subprocess.Popen(
                _java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self._props(n))),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for f in formats:
            out, _ = f.communicate(timeout=120)
            assert f.returncode == 0, out
        for n in self.nodes:
            self.start(n, wait=False)
        self.wait_ready()

    def _props(self, node):
        return self.workdir / f"node{node}" / "server.properties"

    @property
    def bootstrap(self):
        return ",".join(f"127.0.0.1:{self.ports[n][0]}" for n in self.nodes if n in self.procs)

    def address(self, node):
        return f"127.0.0.1:{self.ports[node][0]}"

    def start(self, node, wait=True):
        assert node not in self.procs, f"node {node} is running"
        log = open(self.workdir / f"node{node}" / "broker.log", "a")
        self.procs[node] = subprocess.Popen(_java("kafka.Kafka", str(self._props(node)), jit=self.jit),
                                            stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def kill(self, node):
        """SIGKILL: the node dies without a controlled shutdown."""
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, node):
        """SIGTERM: a controlled shutdown, as a rolling restart does."""
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self):
        for node in list(self.procs):
            self.kill(node)

    def admin(self):
        """An admin client for the running nodes. Kept: librdkafka fails the
        pending requests of a client that is dropped."""
        if getattr(self, "_admin", (None, None))[0] != self.bootstrap:
            self._admin = (self.bootstrap, AdminClient({"bootstrap.servers": self.bootstrap}))
        return self._admin[1]

    def wait_ready(self, timeout=90):
        """Until every running node is a live broker of the cluster."""
        deadline = time.time() + timeout
        want = set(self.procs)
        while True:
            for node, proc in self.procs.items():
                assert proc.poll() is None, f"Kafka node {node} exited: " + self.log(node)[-3000:]
            try:
                # Quiet: refused connections are expected while the JVM starts.
                probe = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
                brokers = set(probe.list_topics(timeout=2).brokers)
                if want <= brokers:
                    return
            except Exception:
                pass
            assert time.time() < deadline, "Kafka did not start: " + self.log(min(want))[-3000:]
            time.sleep(0.2)

    def log(self, node):
        path = self.workdir / f"node{node}" / "broker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def create_topics(self, topics):
        """`topics`: NAME, NAME:PARTITIONS (4 when left out, as the mock
        cluster did), or NAME:PARTITIONS:compact."""
        new = []
        for t in topics:
            name, *rest = t.split(":")
            partitions = int(rest[0]) if rest else 4
            config = {"cleanup.policy": "compact"} if rest[1:] == ["compact"] else {}
            new.append(NewTopic(name, partitions, config=config))
        if not new:
            return
        for topic, future in self.admin().create_topics(new, operation_timeout=30).items():
            future.result()
        self.wait_for_leaders([n.topic for n in new])

    def wait_for_leaders(self, topics, timeout=60):
        deadline = time.time() + timeout
        while True:
            md = self.admin().list_topics(timeout=5)
            ready = all(t in md.topics and md.topics[t].error is None and md.topics[t].partitions
                        and all(p.leader >= 0 for p in md.topics[t].partitions.values()) for t in topics)
            if ready:
                return
            assert time.time() < deadline, f"no leaders for {topics}"
            time.sleep(0.2)

    def delete_topic(self, name):
        for _, future in self.admin().delete_topics([name], operation_timeout=30).items():
            future.result()
        deadline = time.time() + 60
        while name in self.admin().list_topics(timeout=5).topics:
            assert time.time() < deadline, f"topic {name} was not deleted"
            time.sleep(0.2)

    def add_partitions(self, name, total):
        for _, future in self.admin().create_partitions([NewPartitions(name, total)]).items():
            future.result()
        self.wait_for_leaders([name])

    def leader(self, topic, partition):
        return self.admin().list_topics(topic, timeout=5).topics[topic].partitions[partition].leader

    def topic_config(self, topic):
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        configs = self.admin().describe_configs([resource])[resource].result()
        return {k: v.value for k, v in configs.items()}


def _cluster_id():
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding,
    not starting with `-` (the storage tool would take it for an option)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
