"""Schema evolution: a producer moves through four versions of its schema
(v2 adds a field, v3 adds a nested field, v4 changes a type) and the table
follows, read back by DuckDB and Python deltalake after every step."""

import json
import subprocess

import pytest
from deltalake import DeltaTable

from conftest import confluent, duck, run_spec, write_spec

GEO_V1 = {"type": "record", "name": "Geo", "fields": [{"name": "lat", "type": "double"}]}
V1 = {"type": "record", "name": "Order", "namespace": "example", "fields": [
    {"name": "id", "type": "long"},
    {"name": "name", "type": "string"},
    {"name": "geo", "type": GEO_V1},
]}
V2 = {**V1, "fields": V1["fields"] + [{"name": "coupon", "type": ["null", "string"], "default": None}]}
GEO_V3 = {**GEO_V1, "fields": GEO_V1["fields"] + [{"name": "lon", "type": ["null", "double"], "default": None}]}
V3 = {**V2, "fields": [f if f["name"] != "geo" else {"name": "geo", "type": GEO_V3} for f in V2["fields"]]}
V4 = {**V3, "fields": [f if f["name"] != "id" else {"name": "id", "type": "string"} for f in V3["fields"]]}


def order(n, version):
    record = {"id": n, "name": f"order-{n}", "geo": {"lat": n / 10}}
    if version >= 2:
        record["coupon"] = f"C{n}" if n % 2 else None
    if version >= 3:
        record["geo"]["lon"] = -n / 10
    if version >= 4:
        record["id"] = str(n)
    return record


def log_versions(table):
    return sorted(int(f.stem) for f in (table / "_delta_log").glob("*.json"))


def commit_actions(table, version):
    return [json.loads(line) for line in (table / "_delta_log" / f"{version:020}.json").read_text().splitlines()]


@pytest.mark.parametrize("dev_stack", [["evo:2"]], indirect=True)
def test_the_table_follows_v1_v2_v3_and_refuses_v4(binary, dev_stack, tmp_path):
    ids = {v: dev_stack.register("evo-value", schema) for v, schema in ((1, V1), (2, V2), (3, V3), (4, V4))}
    assert len(set(ids.values())) == 4
    table = tmp_path / "lake" / "evo"
    spec = write_spec(tmp_path / "evo.yaml", pipeline="evo", bootstrap=dev_stack.bootstrap, topic="evo",
                      registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt")
    schemas = {1: V1, 2: V2, 3: V3, 4: V4}

    def produce(pairs):
        dev_stack.produce("evo", [(str(n).encode(), confluent(ids[v], schemas[v], order(n, v)), None) for n, v in pairs])

    def ingest():
        result = run_spec(binary, spec)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    con = duck()
    # v1
    produce([(n, 1) for n in range(100)])
    ingest()
    assert con.execute(f"select count(*), sum(geo.lat) from delta_scan('{table}')").fetchone() == (100, sum(n / 10 for n in range(100)))
    columns = [r[0] for r in con.execute(f"describe select * from delta_scan('{table}')").fetchall()]
    assert columns == ["id", "name", "geo"]

    # v2 adds `coupon`: the column arrives in the commit of the first batch that carries it.
    before = log_versions(table)[-1]
    produce([(n, 2) for n in range(100, 200)])
    ingest()
    added = [v for v in log_versions(table) if v > before]
    first = commit_actions(table, added[0])
    assert any("metaData" in a for a in first) and any("add" in a for a in first), "schema change and rows in one commit"
    schema = json.loads(next(a["metaData"]["schemaString"] for a in first if "metaData" in a))
    assert [f["name"] for f in schema["fields"]] == ["id", "name", "geo", "coupon"]
    rows = con.execute(f"select id, coupon from delta_scan('{table}') order by id").fetchall()
    assert rows == [(n, None) for n in range(100)] + [(n, f"C{n}" if n % 2 else None) for n in range(100, 200)]

    # v1 and v3 records mixed in one batch: v3 adds the nested geo.lon.
    produce([(n, 3 if n % 2 else 1) for n in range(200, 300)])
    ingest()
    rows = con.execute(f"select id, coupon, geo.lat, geo.lon from delta_scan('{table}') where id >= 200 order by id").fetchall()
    assert rows == [(n, f"C{n}" if n % 2 else None, n / 10, -n / 10 if n % 2 else None) for n in range(200, 300)]
    assert con.execute(f"select count(*) from delta_scan('{table}') where geo.lon is not null").fetchone()[0] == 50
    # The second reader agrees, and sees the nested column.
    dt = DeltaTable(str(table))
    fields = {f["name"]: f["type"] for f in json.loads(dt.schema().to_json())["fields"]}
    assert [f["name"] for f in fields["geo"]["fields"]] == ["lat", "lon"]
    assert dt.to_pyarrow_table().num_rows == 300

    # Compaction merges files written under three schema versions into one.
    spec.write_text(spec.read_text() + "compaction:\n  min_files: 2\n")
    compacted = subprocess.run([binary, "compact", "--spec", str(spec), "--no-vacuum"], capture_output=True, text=True, timeout=120)
    assert compacted.returncode == 0, compacted.stderr[-3000:]
    assert json.loads(compacted.stdout.splitlines()[-1])["filesAdded"] >= 1
    after = con.execute(f"select id, coupon, geo.lat, geo.lon from delta_scan('{table}') order by id").fetchall()
    assert len(after) == 300 and after[200:] == rows
    assert after[:100] == [(n, None, n / 10, None) for n in range(100)]

    # v4 changes the type of `id`: the batch fails, naming subject and field; nothing is written.
    before = log_versions(table)
    produce([(300, 4)])
    refused = run_spec(binary, spec)
    assert refused.returncode != 0
    assert f"subject evo-value (writer schema id {ids[4]}): field id" in refused.stderr \
        and "incompatible type change" in refused.stderr, refused.stderr[-2000:]
    assert log_versions(table) == before
    assert con.execute(f"select count(*) from delta_scan('{table}')").fetchone()[0] == 300

    # With on_incompatible: dead_letter, the v4 record goes to the dead-letter
    # table with the reason, and the v3 record after it lands.
    produce([(301, 3)])
    spec.write_text(spec.read_text() + "schema_evolution:\n  on_incompatible: dead_letter\n")
    ingest()
    assert con.execute(f"select max(id), count(*) from delta_scan('{table}')").fetchone() == (301, 301)
    dead = con.execute(f"select \"offset\", error from delta_scan('{table}_dead_letters')").fetchall()
    assert len(dead) == 1 and "incompatible schema version (subject evo-value" in dead[0][1] and "field id" in dead[0][1], dead


GEO = {"type": "record", "name": "Geo", "namespace": "shared", "fields": [
    {"name": "lat", "type": "double"}, {"name": "lon", "type": "double"}]}
SHIPMENT = {"type": "record", "name": "Shipment", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"},
    {"name": "origin", "type": "shared.Geo"},
    {"name": "destination", "type": ["null", "shared.Geo"], "default": None},
]}
# The same schema with the reference written out, for the independent encoder.
SHIPMENT_INLINED = {**SHIPMENT, "fields": [SHIPMENT["fields"][0], {"name": "origin", "type": GEO},
                                           SHIPMENT["fields"][2]]}


@pytest.mark.parametrize("dev_stack", [["shipments:2"]], indirect=True)
def test_schema_references_are_resolved_through_the_registry(binary, dev_stack, tmp_path):
    dev_stack.register("shared.Geo", GEO)
    schema_id = dev_stack.register("shipments-value", SHIPMENT,
                                   references=[{"name": "shared.Geo", "subject": "shared.Geo", "version": 1}])
    shipments = [{"id": n, "origin": {"lat": n / 2, "lon": -n / 2},
                  "destination": None if n % 3 == 0 else {"lat": n * 1.0, "lon": 1.0}} for n in range(200)]
    dev_stack.produce("shipments", [(None, confluent(schema_id, SHIPMENT_INLINED, s), None) for s in shipments])
    table = tmp_path / "lake" / "shipments"
    spec = write_spec(tmp_path / "shipments.yaml", pipeline="shipments", bootstrap=dev_stack.bootstrap,
                      topic="shipments", registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt")
    result = run_spec(binary, spec)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = duck().execute(f"""select id, origin.lat, origin.lon, destination.lat
                              from delta_scan('{table}') order by id""").fetchall()
    assert rows == [(s["id"], s["origin"]["lat"], s["origin"]["lon"],
                     None if s["destination"] is None else s["destination"]["lat"]) for s in shipments]
    dead = tmp_path / "lake" / "shipments_dead_letters"
    assert not (dead / "_delta_log").exists() or \
        duck().execute(f"select count(*) from delta_scan('{dead}')").fetchone()[0] == 0
    # validate resolves the references too, and checks column references against them.
    out = subprocess.run([binary, "validate", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0 and "not checked" not in out.stderr, out.stdout + out.stderr


@pytest.mark.parametrize("dev_stack", [["orders:1"]], indirect=True)
def test_validate_finds_the_subject_by_each_naming_strategy(binary, dev_stack, tmp_path):
    spec = write_spec(tmp_path / "orders.yaml", pipeline="orders", bootstrap=dev_stack.bootstrap, topic="orders",
                      registry=dev_stack.registry, table=tmp_path / "lake" / "orders", checkpoint=tmp_path / "ckpt",
                      partition_by=["nope"])
    base = spec.read_text()
    for strategy, subject in (("topic_name", "orders-value"), ("record_name", "example.Order"),
                              ("topic_record_name", "orders-example.Order")):
        dev_stack.register(subject, V1)
        spec.write_text(base.replace(f"url: '{dev_stack.registry}'",
                                     f"url: '{dev_stack.registry}'\n    subject_strategy: {strategy}\n"
                                     f"    record_name: example.Order"))
        out = subprocess.run([binary, "validate", str(spec)], capture_output=True, text=True)
        # The subject was found: the unknown partition column is reported against its fields.
        assert out.returncode == 1 and 'unknown partition column "nope"; the record has: id, name, geo' in out.stdout, \
            (strategy, out.stdout, out.stderr)
    spec.write_text(base.replace(f"url: '{dev_stack.registry}'",
                                 f"url: '{dev_stack.registry}'\n    subject_strategy: record_name"))
    out = subprocess.run([binary, "validate", "--offline", str(spec)], capture_output=True, text=True)
    assert out.returncode == 1 and "record_name: the record_name and topic_record_name strategies need" in out.stdout


@pytest.mark.parametrize("dev_stack", [["recast:1"]], indirect=True)
def test_a_select_that_retypes_a_field_is_not_a_schema_conflict(binary, dev_stack, tmp_path):
    """With on_incompatible: dead_letter, each new run checks the writer
    schema against the table. A field the SELECT recomputes under its own
    name reaches the table with another type: that is no conflict, and no
    record may be dead-lettered for it."""
    schema_id = dev_stack.register("recast-value", V1)
    table = tmp_path / "lake" / "recast"
    spec = write_spec(tmp_path / "recast.yaml", pipeline="recast", bootstrap=dev_stack.bootstrap, topic="recast",
                      registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt",
                      extra="transform:\n  sql: \"SELECT CAST(id AS string) AS id, name FROM batch\"\n"
                            "schema_evolution:\n  on_incompatible: dead_letter\n")
    con = duck()
    for first in (0, 50):
        dev_stack.produce("recast", [(None, confluent(schema_id, V1, order(n, 1)), None) for n in range(first, first + 50)])
        result = run_spec(binary, spec)
        assert result.returncode == 0, result.stderr[-3000:]
    dead_letter_commits = list((tmp_path / "lake" / "recast_dead_letters" / "_delta_log").glob("*.json"))
    assert dead_letter_commits == [], "records were dead-lettered"
    assert [r[:2] for r in con.execute(f"describe select * from delta_scan('{table}')").fetchall()] == [
        ("id", "VARCHAR"), ("name", "VARCHAR")]
    assert sorted(int(r[0]) for r in con.execute(f"select id from delta_scan('{table}')").fetchall()) == list(range(100))
