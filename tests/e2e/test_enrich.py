"""`enrich`: stream-static joins with Delta dimension tables, on Apache
Kafka. The dimensions are written by Python `deltalake`, the results read by
DuckDB's delta extension, and each row's looked-up values are checked
against the dimension version its batch recorded in its commit."""

import json
import os
import signal
import subprocess

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from conftest import confluent, duck, run_spec, write_spec
from test_exactly_once import start, verify, wait_until

PAYMENT = {"type": "record", "name": "Payment", "namespace": "example.enrich", "fields": [
    {"name": "payment_id", "type": "long"},
    {"name": "card_id", "type": "string"},
    {"name": "amount_cents", "type": "long"},
]}


def payment(n):
    return {"payment_id": n, "card_id": f"c{n % 12}", "amount_cents": 1000 + n}


def tiers(version):
    """The risk tiers of dimension version 0 and 1; c10 and c11 have none."""
    return {f"c{i}": ("low" if i < 5 else "high") if version == 0 else "medium" for i in range(10)}


LIMITS = {f"c{i}": 10_000 * (i + 1) for i in range(11)}  # c11 has no limit: dropped by the inner join


def write_tiers(path, version, mode):
    t = tiers(version)
    write_deltalake(str(path), pa.table({"card_id": list(t), "risk_tier": list(t.values())}), mode=mode)


def setup(dev_stack, tmp_path, count, extra_spec=""):
    schema_id = dev_stack.register("payments-value", PAYMENT)
    dev_stack.produce("payments", [(None, confluent(schema_id, PAYMENT, payment(n)), 0) for n in range(count)])
    dims = tmp_path / "dims"
    write_tiers(dims / "tiers", 0, "error")
    write_deltalake(str(dims / "limits"), pa.table({"card_id": list(LIMITS), "limit_cents": list(LIMITS.values())}))
    table = tmp_path / "lake" / "payments"
    spec = write_spec(tmp_path / "payments.yaml", pipeline="payments", bootstrap=dev_stack.bootstrap,
                      topic="payments", registry=dev_stack.registry, table=table, checkpoint=tmp_path / "ckpt",
                      extra=f"""enrich:
  - table: 'file://{dims / "tiers"}'
    on: [card_id]
    columns: [risk_tier]
    refresh_interval: 300ms
  - table: '{dims / "limits"}'
    on: [card_id]
    columns: [limit_cents]
    how: inner
transform:
  columns:
    over_limit: "amount_cents * 10 > limit_cents"
    tier_label: "coalesce(risk_tier, 'unknown')"
{extra_spec}""")
    text = spec.read_text().replace("topic: payments\n", "topic: payments\n  columns:\n    offset: kafka_offset\n", 1)
    spec.write_text(text)
    return spec, table, dims


def commits(table):
    """commitInfo.tributary of each data commit, oldest first."""
    out = []
    for f in sorted((table / "_delta_log").glob("*.json")):
        for line in f.read_text().splitlines():
            action = json.loads(line)
            info = action.get("commitInfo", {}).get("tributary")
            if info and info.get("ranges"):
                out.append(info)
    return out


def check_rows(table, count):
    """Every row's looked-up values are those of the dimension version its
    batch recorded; returns the versions the batches recorded."""
    version_of = {}
    batches = commits(table)
    for info in batches:
        for r in info["ranges"]:
            for offset in range(r["start"], r["end"]):
                version_of[offset] = info["dimensionVersions"]
    rows = duck().execute(
        f"SELECT kafka_offset, payment_id, card_id, risk_tier, limit_cents, over_limit, tier_label "
        f"FROM delta_scan('{table}')").fetchall()
    expected_ids = {n for n in range(count) if payment(n)["card_id"] in LIMITS}
    assert sorted(r[1] for r in rows) == sorted(expected_ids), "inner join: exactly the cards with a limit, once"
    for offset, payment_id, card, tier, limit, over, label in rows:
        tier_version, limit_version = version_of[offset]
        assert limit_version == 0
        assert tier == tiers(tier_version).get(card), (payment_id, card, tier, tier_version)
        assert label == (tier or "unknown")
        assert limit == LIMITS[card] and over == (payment(payment_id)["amount_cents"] * 10 > limit)
    assert any(r[3] is None for r in rows), "c10 has no tier: the left join keeps it with NULL"
    return [tuple(b["dimensionVersions"]) for b in batches]


@pytest.mark.parametrize("dev_stack", [["payments:1"]], indirect=True)
def test_a_replayed_batch_joins_the_dimension_version_it_recorded(binary, dev_stack, tmp_path):
    spec, table, dims = setup(dev_stack, tmp_path, 600)
    text = spec.read_text().replace("  available_now: true", "  available_now: true\n  max_offsets_per_trigger: 200")
    spec.write_text(text)
    # Batch 1 is planned (with tiers version 0) and the process dies before writing it.
    crashed = run_spec(binary, spec, env={"TRIBUTARY_CRASH_AT": "after_plan@1"})
    assert crashed.returncode != 0
    write_tiers(dims / "tiers", 1, "overwrite")
    result = run_spec(binary, spec)
    assert result.returncode == 0, result.stderr[-3000:]
    # Batch 1 re-ran with version 0 as recorded; batch 2, planned after the update, joined version 1.
    assert check_rows(table, 600) == [(0, 0), (0, 0), (1, 0)]
    report = verify(spec)
    assert report["groups"][0]["rows"] == sum(1 for n in range(600) if payment(n)["card_id"] in LIMITS)


@pytest.mark.parametrize("dev_stack", [["payments:1"]], indirect=True)
def test_batches_after_a_dimension_update_join_the_new_version(binary, dev_stack, tmp_path):
    spec, table, dims = setup(dev_stack, tmp_path, 300)
    spec.write_text(spec.read_text().replace("  available_now: true", "  available_now: false"))
    proc = start(binary, spec)
    try:
        wait_until(lambda: len(commits(table)) >= 1 and commits(table)[-1]["endOffsets"]["0"] == 300, 60,
                   "the first records land")
        write_tiers(dims / "tiers", 1, "overwrite")
        wait_until(lambda: "dimension table changed" in proc.log.read_text(), 30, "the new version is read")
        schema_id = dev_stack.register("payments-value", PAYMENT)
        dev_stack.produce("payments", [(None, confluent(schema_id, PAYMENT, payment(n)), 0) for n in range(300, 600)])
        wait_until(lambda: commits(table)[-1]["endOffsets"]["0"] == 600, 60, "the later records land")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    versions = check_rows(table, 600)
    assert versions[0] == (0, 0) and versions[-1] == (1, 0), versions


@pytest.mark.parametrize("count", [10, 0], ids=["records", "empty-topic"])
@pytest.mark.parametrize("dev_stack", [["payments:1"]], indirect=True)
def test_a_dimension_over_its_memory_bound_is_refused(binary, dev_stack, tmp_path, count):
    """Dimensions load while the first batch is read; one that cannot be
    loaded still stops the pipeline, even with nothing to read."""
    spec, _, _ = setup(dev_stack, tmp_path, count)
    spec.write_text(spec.read_text().replace("    refresh_interval: 300ms\n", "    refresh_interval: 300ms\n    max_size: 100B\n"))
    result = run_spec(binary, spec)
    assert result.returncode != 0
    assert "enrich[0]" in result.stderr and "takes more than max_size" in result.stderr, result.stderr[-2000:]
    checked = subprocess.run([binary, "validate", str(spec)], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, SCHEMA_REGISTRY_URL=dev_stack.registry))
    assert checked.returncode == 0, checked.stdout + checked.stderr
