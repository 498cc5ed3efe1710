"""`tributary validate` on broken specs: every problem, as file:line: path: message."""

import pathlib
import subprocess

import pytest

from conftest import ROOT

FIXTURES = ROOT / "tests/fixtures/specs"


def validate(binary, path, env=None, offline=True):
    args = [binary, "validate", str(path)] + (["--offline"] if offline else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    "fixture",
    sorted(p.stem for p in FIXTURES.glob("*.yaml") if not p.stem.startswith("registry_")),
)
def test_broken_specs_print_their_expected_problems(binary, fixture):
    spec = FIXTURES / f"{fixture}.yaml"
    expected = (FIXTURES / f"{fixture}.expected").read_text().replace("{file}", str(spec)).splitlines()
    result = validate(binary, spec)
    assert result.returncode == 1
    assert result.stdout.splitlines() == expected
    assert "hunter2" not in result.stdout + result.stderr


def test_example_specs_are_valid(binary):
    for spec in sorted((ROOT / "table-specs").glob("**/*.yaml")):
        result = validate(binary, spec)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == f"{spec}: ok"


def test_unknown_partition_column_is_found_against_the_registry(binary, dev_stack, tmp_path):
    import os

    dev_stack.register("clicks-value", {"type": "record", "name": "Click", "fields": [
        {"name": "url", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]})
    spec = FIXTURES / "registry_unknown_partition.yaml"
    env = dict(os.environ, SCHEMA_REGISTRY_URL=dev_stack.registry)
    result = validate(binary, spec, env=env, offline=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f'{spec}:13: table.partition_by[1]: unknown partition column "country"; the record has: url, ts',
        f'{spec}:14: table.partition_by[2]: hour(url) needs a timestamp column, and "url" is not one',
    ]


def test_event_time_columns_are_checked_against_the_registry(binary, dev_stack):
    import json
    import os

    dev_stack.register("payments-value", json.loads((ROOT / "table-specs/schemas/payments.avsc").read_text()))
    spec = FIXTURES / "registry_unknown_event_columns.yaml"
    env = dict(os.environ, SCHEMA_REGISTRY_URL=dev_stack.registry)
    result = validate(binary, spec, env=env, offline=False)
    assert result.returncode == 1, result.stdout + result.stderr
    has = "the record has: payment_id, card_id, merchant, amount, ts"
    # The table's own columns are the window's: a partition column derived
    # from a group key that is not a timestamp is refused too.
    assert result.stdout.splitlines() == [
        f'{spec}:15: event_time.column: unknown column "event_ts"; {has}',
        f'{spec}:18: dedup.keys[1]: unknown column "txn_id"; {has}',
        f'{spec}:21: group_by[0]: unknown column "card"; {has}',
        f'{spec}:24: aggregations[1].column: unknown column "shop"; {has}',
        f'{spec}:11: table.partition_by[1]: unknown partition column "card_id"; the record has: '
        'window_start, window_end, card, amount, merchants',
    ]


def test_run_refuses_what_validate_refuses(binary):
    """`run` checks a spec as `validate` does, before it connects anywhere:
    a stateful spec that would be wrong on several instances never starts."""
    spec = FIXTURES / "partition_scope_window.yaml"
    expected = (FIXTURES / "partition_scope_window.expected").read_text().replace("{file}", str(spec)).strip()
    result = subprocess.run([binary, "run", "--spec", str(spec), "--admin-addr", "127.0.0.1:0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
