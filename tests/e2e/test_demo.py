"""`tributary demo` runs on its embedded defaults, and its table reads back in DuckDB."""

import io
import json
import re
import signal
import subprocess
import time
import urllib.request

import fastavro
import pytest
from confluent_kafka import Consumer

from conftest import duck


def test_demo_table_reads_back_in_duckdb(binary, tmp_path):
    demo_dir = tmp_path / "demo"
    result = subprocess.run(
        [binary, "demo", "--dir", str(demo_dir), "--duration", "4s", "--rate", "2000"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    produced = int(re.search(r"records produced\s+(\d+)", result.stdout).group(1))
    rows = int(re.search(r"rows in the table\s+(\d+)", result.stdout).group(1))
    dead = int(re.search(r"dead letters\s+(\d+)", result.stdout).group(1))
    assert produced >= 7000
    assert rows + dead == produced

    con = duck()
    table = demo_dir / "lake" / "clicks"
    assert con.execute(f"select count(*) from delta_scan('{table}')").fetchone()[0] == rows
    dead_rows = con.execute(f"select count(*) from delta_scan('{demo_dir}/lake/clicks_dead_letters')").fetchone()[0]
    assert dead_rows == dead > 0
    # Duplicates are in the stream on purpose (2%), and kept until dedup is configured.
    distinct = con.execute(f"select count(distinct event_id) from delta_scan('{table}')").fetchone()[0]
    assert distinct < rows
    assert (demo_dir / "clicks.yaml").exists()


def test_fraud_scenario_catches_its_planted_patterns(binary, tmp_path):
    """`demo --scenario fraud`: the example spec on the embedded stack. The
    demo checks itself against what it planted; DuckDB checks the table's
    features against its own RANGE window over the same rows."""
    demo_dir = tmp_path / "demo"
    result = subprocess.run(
        [binary, "demo", "--scenario", "fraud", "--dir", str(demo_dir), "--duration", "4s", "--rate", "3000"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    produced = int(re.search(r"transactions produced\s+(\d+)", out).group(1))
    caught, planted = map(int, re.search(r"patterns caught\s+(\d+) of (\d+) planted", out).groups())
    flagged = int(re.search(r"flagged\s+(\d+)", out).group(1))
    alerts = int(re.search(r"alerts republished\s+(\d+)", out).group(1))
    assert produced >= 9000 and planted >= 10 and caught >= planted - 1
    assert re.search(r"\b0 others\)", out), out
    assert alerts == flagged > 0

    con = duck()
    table = demo_dir / "lake" / "scored_transactions"
    rows = con.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE is_suspicious),
               count(*) FILTER (WHERE peers = 1 AND
                                (tx_count_10m <> sql_count OR merchants_10m <> sql_merchants))
        FROM (SELECT *, count(*) OVER w AS sql_count,
                     count(DISTINCT merchant_id) OVER w AS sql_merchants,
                     count(*) OVER (PARTITION BY card_id, ts) AS peers
              FROM delta_scan('{table}')
              WINDOW w AS (PARTITION BY card_id ORDER BY ts
                           RANGE BETWEEN INTERVAL 10 MINUTES PRECEDING AND CURRENT ROW))""").fetchone()
    # A card's transactions arrive in event-time order, so a row alone at
    # its millisecond has read every row of its SQL frame: the features must
    # be SQL's. (Of payments in one millisecond, SQL counts the later ones
    # too, which had not arrived yet: docs/event-time.md.)
    assert rows[0] == produced and rows[1] == flagged
    assert rows[2] == 0, f"{rows[2]} rows whose features differ from DuckDB's window"


@pytest.mark.parametrize("dev_stack", [["gen:3"]], indirect=True)
def test_produce_only_feeds_an_existing_cluster_and_registry(binary, dev_stack):
    """`demo --produce-only` (the data generator of docker/compose.yaml):
    registers the schema, finds the topic (the mock cluster cannot create
    topics through the admin API; a real broker can), stops cleanly on
    SIGTERM, and every record it counts is in the topic, readable by fastavro."""
    proc = subprocess.Popen(
        [binary, "demo", "--produce-only", "--bootstrap-servers", dev_stack.bootstrap,
         "--schema-registry-url", dev_stack.registry, "--topic", "gen", "--partitions", "3",
         "--rate", "2000", "--duration", "1h"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["topic"] == "gen" and report["produced"] >= 2000
    assert 0 < report["malformed"] < report["produced"]

    with urllib.request.urlopen(f"{dev_stack.registry}/schemas/ids/{report['schemaId']}", timeout=10) as resp:
        schema = fastavro.parse_schema(json.loads(json.load(resp)["schema"]))
    consumer = Consumer({"bootstrap.servers": dev_stack.bootstrap, "group.id": "check",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    assert len(consumer.list_topics("gen", timeout=10).topics["gen"].partitions) == 3
    consumer.subscribe(["gen"])
    decoded = malformed = 0
    deadline = time.time() + 60
    while decoded + malformed < report["produced"] and time.time() < deadline:
        for msg in consumer.consume(1000, timeout=1):
            assert msg.error() is None, msg.error()
            value = msg.value()
            if value[:1] != b"\x00":
                malformed += 1
                continue
            assert int.from_bytes(value[1:5], "big") == report["schemaId"]
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema)
            assert record["device"] in ("desktop", "mobile", "tablet")
            decoded += 1
    consumer.close()
    assert malformed == report["malformed"]
    assert decoded + malformed == report["produced"]
