"""Batches planned before they are read, as Spark's Kafka source plans
them: `max_offsets_per_trigger` split over the partitions in proportion to
their lag, each partition read to its planned end. The same backlog gives
the same batches and the same windows every time, whatever order Apache
Kafka's fetches bring the partitions in."""

import json
import random

import pytest

from conftest import confluent, duck, read_ranges, run_spec, spark_ranges, write_spec
from test_event_time import CLICK_SCHEMA, clicks
from test_exactly_once import lines


def windowed_spec(stack, tmp_path, name):
    path = write_spec(tmp_path / f"{name}.yaml", pipeline=name, bootstrap=stack.bootstrap, topic="clicks",
                      registry=stack.registry, table=tmp_path / "lake" / name, checkpoint=tmp_path / "ckpt" / name,
                      extra=f"""event_time: {{column: ts, watermark_delay: 30s}}
window: {{tumbling: {{size: 1m}}}}
aggregations: [{{name: clicks, function: count}}]
""")
    path.write_text(path.read_text().replace("  available_now: true", "  available_now: true\n  max_offsets_per_trigger: 2000"))
    return path


def offsets(events):
    return [(e["batchId"], e["sources"][0]["startOffset"], e["sources"][0]["endOffset"]) for e in events]


@pytest.mark.parametrize("dev_stack", [["clicks:4"]], indirect=True)
def test_one_backlog_gives_the_same_batches_and_windows_every_time(binary, dev_stack, tmp_path):
    rng = random.Random(20)
    records = clicks(rng, 20000)
    schema_id = dev_stack.register("clicks-value", CLICK_SCHEMA)
    # Uneven partitions: 1, 2, 3 and 4 parts of the backlog.
    weights = [0] * 1 + [1] * 2 + [2] * 3 + [3] * 4
    dev_stack.produce("clicks", [(None, confluent(schema_id, CLICK_SCHEMA, r), rng.choice(weights)) for r in records])
    runs = []
    for name in ("first", "second"):
        events = tmp_path / f"{name}.jsonl"
        result = run_spec(binary, windowed_spec(dev_stack, tmp_path, name), extra=("--progress-json", str(events)),
                          timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        progress = [json.loads(line) for line in lines(events)]
        rows = duck().execute(f"select epoch_us(window_start), clicks from delta_scan('{tmp_path}/lake/{name}') "
                              "order by 1").fetchall()
        runs.append((offsets(progress), [e["numInputRows"] for e in progress], rows, progress))
    (first_batches, first_sizes, first_rows, first_events), (second_batches, _, second_rows, _) = runs
    assert first_batches == second_batches
    assert first_rows == second_rows and first_rows
    # Spark's split: each partition reads its share of the lag, so every
    # batch but the last reads about the whole limit. Then, as in Spark, one
    # batch without rows closes the windows the last watermark passed.
    assert first_sizes[-1] == 0, first_sizes
    data_sizes = first_sizes[:-1]
    assert all(1996 <= n <= 2000 for n in data_sizes[:-1]), first_sizes
    assert sum(data_sizes) == len(records)
    assert read_ranges(first_events, "clicks")[:-1] == spark_ranges(first_events, "clicks", 2000)
