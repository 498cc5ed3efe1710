"""Columns from the Kafka record besides its value: key (as text or bytes),
headers (map<string, binary>), topic, partition, offset and timestamp, read
back by DuckDB and checked against what the producer's delivery reports say."""

import json

import pytest

from conftest import confluent, duck, run_spec, write_spec

SCHEMA = {"type": "record", "name": "Event", "fields": [{"name": "id", "type": "long"}]}
BASE_MS = 1_767_225_600_000
COLUMNS = """  columns:
    key: {{name: kafka_key, format: {format}}}
    headers: kafka_headers
    topic: kafka_topic
    partition: kafka_partition
    offset: kafka_offset
    timestamp: kafka_timestamp
"""


def produce(stack, schema_id, count):
    """Produces records with keys, headers and timestamps; returns what each
    delivery report says, by id."""
    producer = stack.producer()
    delivered = {}

    def report(n):
        def cb(err, msg):
            assert err is None, err
            delivered[n] = (msg.partition(), msg.offset())
        return cb

    for n in range(count):
        key = None if n % 5 == 0 else f"user-{n % 7}".encode()
        headers = [("trace", f"t{n}".encode()), ("empty", None), ("trace", b"repeated")] if n % 2 else []
        producer.produce("meta", key=key, value=confluent(schema_id, SCHEMA, {"id": n}), headers=headers,
                         timestamp=BASE_MS + n * 1000, on_delivery=report(n))
        producer.poll(0)
    # A key that is not UTF-8 text.
    producer.produce("meta", key=b"\xff\xfe", value=confluent(schema_id, SCHEMA, {"id": count}),
                     timestamp=BASE_MS, on_delivery=report(count))
    assert producer.flush(30) == 0
    return delivered


def spec_with_columns(stack, tmp_path, name, key_format):
    spec = write_spec(tmp_path / f"{name}.yaml", pipeline=name, bootstrap=stack.bootstrap, topic="meta",
                      registry=stack.registry, table=tmp_path / "lake" / name, checkpoint=tmp_path / f"ckpt-{name}",
                      partition_by=["kafka_partition"])
    text = spec.read_text()
    marker = f"    url: '{stack.registry}'\n"
    assert marker in text
    spec.write_text(text.replace(marker, marker + COLUMNS.format(format=key_format)))
    return spec


@pytest.mark.parametrize("dev_stack", [["meta:3"]], indirect=True)
def test_key_headers_and_position_columns_read_back_in_duckdb(binary, dev_stack, tmp_path):
    schema_id = dev_stack.register("meta-value", SCHEMA)
    delivered = produce(dev_stack, schema_id, 300)

    text_spec = spec_with_columns(dev_stack, tmp_path, "text", "string")
    result = run_spec(binary, text_spec)
    assert result.returncode == 0, result.stderr[-3000:]
    con = duck()
    table = tmp_path / "lake" / "text"
    rows = con.execute(f"""select id, kafka_key, kafka_topic, kafka_partition, kafka_offset, epoch_ms(kafka_timestamp),
                                  map_keys(kafka_headers), map_values(kafka_headers)
                           from delta_scan('{table}') order by id""").fetchall()
    assert len(rows) == 300
    for row in rows:
        n = row[0]
        headers = ([["trace", "empty"], [f"t{n}".encode(), None]] if n % 2 else [[], []])
        assert row == (n, None if n % 5 == 0 else f"user-{n % 7}", "meta", *delivered[n], BASE_MS + n * 1000,
                       *headers), row
    # The key that is not UTF-8 became a dead letter, with its raw bytes.
    dead = con.execute(f"select key, error from delta_scan('{table}_dead_letters')").fetchall()
    assert len(dead) == 1 and dead[0][0] == b"\xff\xfe" and "not UTF-8" in dead[0][1]
    # Partitioned by a Kafka column.
    files = con.execute(f"select distinct filename from delta_scan('{table}', filename=true)").fetchall()
    assert files and all("/kafka_partition=" in f[0] for f in files)

    # As bytes, every key is kept, that one included.
    bytes_spec = spec_with_columns(dev_stack, tmp_path, "raw", "bytes")
    result = run_spec(binary, bytes_spec)
    assert result.returncode == 0, result.stderr[-3000:]
    keys = dict(con.execute(f"select id, kafka_key from delta_scan('{tmp_path / 'lake' / 'raw'}')").fetchall())
    assert len(keys) == 301 and keys[300] == b"\xff\xfe" and keys[1] == b"user-1" and keys[0] is None


KEY_V1 = {"type": "record", "name": "AccountKey", "namespace": "example", "fields": [
    {"name": "account", "type": "string"}, {"name": "region", "type": "int"}]}
KEY_V2 = {**KEY_V1, "fields": KEY_V1["fields"] + [{"name": "tier", "type": ["null", "string"], "default": None}]}


def avro_key(schema_id, schema, n):
    record = {"account": f"acct-{n % 11}", "region": n % 4}
    if "tier" in json.dumps(schema):
        record["tier"] = f"tier-{n % 3}"
    return confluent(schema_id, schema, record)


@pytest.mark.parametrize("dev_stack", [["akeys:2", "pkeys:1"]], indirect=True)
def test_avro_keys_are_decoded_through_the_registry(binary, dev_stack, tmp_path):
    value_id = dev_stack.register("akeys-value", SCHEMA)
    v1, v2 = dev_stack.register("akeys-key", KEY_V1), dev_stack.register("akeys-key", KEY_V2)
    messages = []
    for n in range(300):
        # Key schema v1 for the first third, then v2, then v1 again; every 10th key null.
        schema_id, schema = (v2, KEY_V2) if 100 <= n < 200 else (v1, KEY_V1)
        key = None if n % 10 == 0 else avro_key(schema_id, schema, n)
        messages.append((key, confluent(value_id, SCHEMA, {"id": n}), 0))
    messages.append((b"not framed", confluent(value_id, SCHEMA, {"id": 300}), 0))
    dev_stack.produce("akeys", messages)

    spec = write_spec(tmp_path / "akeys.yaml", pipeline="akeys", bootstrap=dev_stack.bootstrap, topic="akeys",
                      registry=dev_stack.registry, table=tmp_path / "lake" / "akeys", checkpoint=tmp_path / "ckpt-a")
    marker = f"    url: '{dev_stack.registry}'\n"
    spec.write_text(spec.read_text().replace(marker, marker + "  columns:\n    key: {name: kafka_key, format: avro}\n"))
    result = run_spec(binary, spec)
    assert result.returncode == 0, result.stderr[-3000:]
    con = duck()
    table = tmp_path / "lake" / "akeys"
    rows = con.execute(f"""select id, kafka_key.account, kafka_key.region, kafka_key.tier
                           from delta_scan('{table}') order by id""").fetchall()
    expected = []
    for n in range(300):
        if n % 10 == 0:
            expected.append((n, None, None, None))
        else:
            expected.append((n, f"acct-{n % 11}", n % 4, f"tier-{n % 3}" if 100 <= n < 200 else None))
    assert rows == expected
    dead = con.execute(f"select key, error from delta_scan('{table}_dead_letters')").fetchall()
    assert len(dead) == 1 and dead[0][0] == b"not framed" and "Avro key" in dead[0][1], dead

    # A key schema that is not a record (a plain Avro string) becomes a column of its type.
    pvalue = dev_stack.register("pkeys-value", SCHEMA)
    pkey = dev_stack.register("pkeys-key", "string")
    dev_stack.produce("pkeys", [(confluent(pkey, "string", f"user-{n}"), confluent(pvalue, SCHEMA, {"id": n}), None)
                                for n in range(50)])
    pspec = write_spec(tmp_path / "pkeys.yaml", pipeline="pkeys", bootstrap=dev_stack.bootstrap, topic="pkeys",
                       registry=dev_stack.registry, table=tmp_path / "lake" / "pkeys", checkpoint=tmp_path / "ckpt-p")
    pspec.write_text(pspec.read_text().replace(marker, marker + "  columns:\n    key: {name: user, format: avro}\n"))
    result = run_spec(binary, pspec)
    assert result.returncode == 0, result.stderr[-3000:]
    users = con.execute(f"select id, user from delta_scan('{tmp_path / 'lake' / 'pkeys'}') order by id").fetchall()
    assert users == [(n, f"user-{n}") for n in range(50)]
