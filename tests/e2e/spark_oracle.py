"""Spark Structured Streaming as the oracle of event time: pyspark (PyPI) on
the machine's Java runs a query over the same events, fed as one file per
micro-batch, so Spark cuts the stream into exactly Tributary's batches.

One Spark session serves a whole test run (it takes seconds to start); each
query reads its own directory and collects what every batch wrote through
`foreachBatch`."""

import json
import os
import pathlib

_session = None


def session():
    global _session
    if _session is None:
        from pyspark.sql import SparkSession

        _session = (
            SparkSession.builder.master("local[2]")
            .appName("tributary-oracle")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", "1g")
            .config("spark.sql.streaming.stateStore.stateSchemaCheck", "false")
            .getOrCreate()
        )
        _session.sparkContext.setLogLevel("ERROR")
    return _session


def write_batches(directory, batches):
    """One JSON-lines file per batch, older files first: Spark's file source
    with maxFilesPerTrigger=1 takes one file per batch, oldest first."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True)
    for n, rows in enumerate(batches):
        path = directory / f"batch-{n:05}.json"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.utime(path, (1_000_000 + n, 1_000_000 + n))


def run(tmp_path, batches, schema, query, columns, mode="append"):
    """Runs `query(streaming_df)` over `batches` (lists of dicts matching the
    DDL `schema`, whose `ts_us` column is the event time in microseconds,
    read as the timestamp `ts`) with the available-now trigger. Returns the
    rows each batch wrote, by batch id, as dicts of the SQL expressions
    `columns` (timestamps as numbers: pyspark would turn them into the
    local time of this process)."""
    from pyspark.sql import functions as F

    spark = session()
    source = tmp_path / "spark-input"
    write_batches(source, batches)
    frame = (
        spark.readStream.schema(schema)
        .option("maxFilesPerTrigger", 1)
        .json(str(source))
        .withColumn("ts", F.timestamp_micros("ts_us"))
    )
    out = {}

    def collect(df, batch_id):
        out[batch_id] = [r.asDict() for r in df.selectExpr(*columns).collect()]

    handle = (
        query(frame)
        .writeStream.outputMode(mode)
        .option("checkpointLocation", str(tmp_path / "spark-checkpoint"))
        .foreachBatch(collect)
        .trigger(availableNow=True)
        .start()
    )
    handle.awaitTermination()
    if handle.exception() is not None:
        raise handle.exception()
    return out
