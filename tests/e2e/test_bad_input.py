"""What hostile records get: a row dated far in the future goes to the dead
letters and leaves the watermark alone (docs/operations.md, "What bad input
gets")."""

import datetime as dt
import json
import uuid

import pytest

from conftest import ROOT, confluent, duck, run_spec, write_spec

CLICK_SCHEMA = json.loads((ROOT / "tests/fixtures/schemas/click.avsc").read_text())


def click(i, ts):
    return {"event_id": str(uuid.UUID(int=i + 1)), "user_id": i % 3, "url": "/", "ts": ts,
            "device": "mobile", "referrer": None}


@pytest.mark.parametrize("dev_stack", [["clicks:1"]], indirect=True)
def test_a_row_from_the_far_future_is_a_dead_letter_and_moves_no_watermark(binary, dev_stack, tmp_path):
    schema_id = dev_stack.register("clicks-value", CLICK_SCHEMA)
    # Half past a minute an hour ago, so the first window closes within the
    # clicks whatever the time is.
    base = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).replace(second=30, microsecond=0)
    # 30 clicks a second apart, then one dated 2100, then 30 more: the rows
    # after it are read in later batches (10 offsets each).
    rows = [click(i, base + dt.timedelta(seconds=i)) for i in range(30)]
    rows.append(click(30, dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)))
    rows += [click(i, base + dt.timedelta(seconds=i)) for i in range(31, 61)]
    placed = dev_stack.produce("clicks", [(None, confluent(schema_id, CLICK_SCHEMA, r), None) for r in rows])

    table = tmp_path / "lake" / "clicks_per_minute"
    spec = write_spec(tmp_path / "s.yaml", pipeline="future", bootstrap=dev_stack.bootstrap, topic="clicks",
                      registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt", extra=f"""
event_time: {{column: ts, watermark_delay: 10s}}
window: {{tumbling: {{size: 1m}}}}
aggregations: [{{name: clicks, function: count}}]
late_rows: 'file://{tmp_path}/lake/late'
""")
    spec.write_text(spec.read_text().replace("  available_now: true", "  available_now: true\n  max_offsets_per_trigger: 10"))
    result = run_spec(binary, spec)
    assert result.returncode == 0, result.stderr[-3000:]

    con = duck()
    counted = con.execute(f"select sum(clicks) from delta_scan('{table}')").fetchone()[0]
    # The windows the end-of-drain watermark (newest click - 10 s) closed
    # hold every on-time click before their end; none is late.
    watermark = (base + dt.timedelta(seconds=60 - 10)).timestamp()
    closed = [r for r in rows if r["ts"].year < 2100 and (r["ts"].timestamp() // 60 + 1) * 60 <= watermark]
    assert len(closed) == 30 and counted == len(closed), (counted, len(closed))
    assert not (tmp_path / "lake" / "late" / "_delta_log").exists() or \
        con.execute(f"select count(*) from delta_scan('{tmp_path}/lake/late')").fetchone()[0] == 0

    dead = con.execute(f"select \"partition\", \"offset\", error from delta_scan('{table}_dead_letters')").fetchall()
    assert [(d[0], d[1]) for d in dead] == [placed[30]]
    assert "event_time.max_future" in dead[0][2] and "past the record's Kafka timestamp" in dead[0][2], dead[0][2]
