"""Every kind of bad input lands in the dead-letter table with its reason and
raw bytes, and every good record arrives exactly once."""

import io

import fastavro
import pytest

from conftest import confluent, duck, run_spec, write_spec
from test_exactly_once import held_offsets, verify

SCHEMA = {"type": "record", "name": "Row", "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"}]}


def body(record):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(SCHEMA), record)
    return buf.getvalue()


@pytest.mark.parametrize("dev_stack", [["mixed:3"]], indirect=True)
def test_bad_records_become_dead_letters_and_the_rest_arrives(binary, dev_stack, tmp_path):
    schema_id = dev_stack.register("mixed-value", SCHEMA)
    header = b"\x00" + schema_id.to_bytes(4, "big")
    good = lambda n: confluent(schema_id, SCHEMA, {"id": n, "name": f"n{n}"})
    bad = {
        "no magic byte": (b"\x07" + good(1)[1:], "magic byte"),
        "plain JSON": (b'{"id": 1}', "magic byte"),
        "short header": (b"\x00\x00\x01", "truncated Confluent header"),
        "unknown schema id": (b"\x00" + (987654).to_bytes(4, "big") + body({"id": 1, "name": "x"}), "unknown schema id 987654"),
        "truncated body": (header + body({"id": 5, "name": "a long enough name"})[:-4], "truncated Avro body"),
        "garbage body": (header + b"\xff" * 11, "invalid Avro body"),
        "trailing bytes": (header + body({"id": 6, "name": "b"}) + b"\x02\x04", "trailing byte"),
        "tombstone": (None, "tombstone"),
    }
    messages, expected_dead = [], []
    n = 0
    for round_ in range(3):
        for label, (value, reason) in bad.items():
            for _ in range(5):
                messages.append((f"g{n}".encode(), good(n), None))
                n += 1
            messages.append((f"bad-{label}-{round_}".encode(), value, None))
            expected_dead.append((len(messages) - 1, label, reason))
    placed = dev_stack.produce("mixed", messages)

    table, dead_table = tmp_path / "lake" / "mixed", tmp_path / "lake" / "mixed_dead_letters"
    spec = write_spec(
        tmp_path / "mixed.yaml", pipeline="mixed", bootstrap=dev_stack.bootstrap, topic="mixed",
        registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt",
    )
    result = run_spec(binary, spec)
    assert result.returncode == 0, result.stderr

    con = duck()
    ids = [r[0] for r in con.execute(f"select id from delta_scan('{table}') order by id").fetchall()]
    assert ids == list(range(n)), "every good record exactly once"
    names = dict(con.execute(f"select id, name from delta_scan('{table}')").fetchall())
    assert all(names[i] == f"n{i}" for i in range(n))

    dead = con.execute(
        f"select topic, \"partition\", \"offset\", key, value, error, batch_id from delta_scan('{dead_table}')"
    ).fetchall()
    assert len(dead) == len(expected_dead)
    by_position = {(d[1], d[2]): d for d in dead}
    for index, label, reason in expected_dead:
        partition, offset = placed[index]
        row = by_position[(partition, offset)]
        key, value = messages[index][0], messages[index][1]
        assert row[0] == "mixed"
        assert row[3] == key, label
        assert row[4] == value, label
        assert reason in row[5], f"{label}: {row[5]!r} lacks {reason!r}"
        assert row[6] >= 0
    assert held_offsets(verify(spec)) == len(messages)


@pytest.mark.parametrize("dev_stack", [["late:1"]], indirect=True)
def test_a_replay_keeps_the_dead_letters_its_plan_recorded(binary, dev_stack, tmp_path):
    """Records whose schema id the registry did not know when their batch was
    planned went to the dead-letter table; the process dies before the data
    commit; the schema is registered meanwhile. The re-run must send the same
    records to the dead-letter table (where they already are), not decode
    them into the data table too."""
    schema_id = dev_stack.register("late-value", SCHEMA)
    later_schema = dict(SCHEMA, name="RowLater")
    unknown_id = schema_id + 1  # the id the registry gives the next schema
    messages = [(b"k", confluent(schema_id, SCHEMA, {"id": n, "name": f"n{n}"}), None) for n in range(50)]
    messages += [(b"u", b"\x00" + unknown_id.to_bytes(4, "big") + body({"id": 1000 + n, "name": "u"}), None)
                 for n in range(5)]
    messages += [(b"k", confluent(schema_id, SCHEMA, {"id": n, "name": f"n{n}"}), None) for n in range(50, 100)]
    dev_stack.produce("late", messages)
    table, dead_table = tmp_path / "lake" / "late", tmp_path / "lake" / "late_dead_letters"
    spec = write_spec(
        tmp_path / "late.yaml", pipeline="late", bootstrap=dev_stack.bootstrap, topic="late",
        registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt",
    )
    crashed = run_spec(binary, spec, env={"TRIBUTARY_CRASH_AT": "after_dead_letters@0"})
    assert crashed.returncode != 0 and "aborting at after_dead_letters of batch 0" in crashed.stderr, crashed.stderr[-2000:]
    assert dev_stack.register("late-value-later", later_schema) == unknown_id

    done = run_spec(binary, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "re-running a planned batch with its recorded offsets" in done.stderr
    con = duck()
    ids = [r[0] for r in con.execute(f"select id from delta_scan('{table}') order by id").fetchall()]
    assert ids == list(range(100)), f"the data table holds {len(ids)} rows: {ids[-8:]}"
    dead = con.execute(f"select \"offset\", error from delta_scan('{dead_table}') order by 1").fetchall()
    assert [d[0] for d in dead] == list(range(50, 55))
    assert all(f"unknown schema id {unknown_id}" in d[1] for d in dead), dead
    verify(spec)
