"""Spark Structured Streaming beside Tributary: same machine, broker, topic
and records.

A one-node Apache Kafka (KRaft, its own process) holds ROWS records of the
10-field benchmark schema (`tributary bench produce`) in 4 partitions, with
their schema in the development registry. Then each engine runs two jobs
over the whole topic with an available-now trigger, one after the other:

  drain:   Kafka -> decode the Confluent-framed Avro -> append to a Delta table
  windows: the same, then a count per 1-minute tumbling window on `ts`
           (watermark 10 s, append mode) into a Delta table

Spark runs in local[2] (both cores), with the Kafka source and Avro jars of
its own version and delta-spark from Maven Central, 2 shuffle partitions,
the default in-memory state store and a 4 GiB driver; the JVM's start and
the resolution of the jars are left out of its time, not out of ours.
Tributary is one `tributary run` process per job, timed from its start to
its exit. CPU-seconds and peak RSS are each engine's own process (for Spark
the JVM, read from /proc, its peak over the session so far; for Tributary
its rusage), never the broker's.

Both tables are then read back: each must hold every produced record once
(read by DuckDB's delta extension, by Kafka partition and offset), and the
two window tables must hold the same windows with the same counts.

    TRIBUTARY_BIN=target/release/tributary KAFKA_LIBS=~/.cache/tributary/kafka-4.1.1/libs \\
        python benchmarks/spark_beside.py [ROWS]

docs/benchmarks.md records the figures."""

import json
import os
import pathlib
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "e2e"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "bench"))
from conftest import DevStack, duck, write_spec  # noqa: E402
from kafka_cluster import KafkaCluster  # noqa: E402
from tools import peak_rss_mib, produce_backlog, run_to_exit, with_offset_columns  # noqa: E402

TOPIC = "events"
PARTITIONS = 4
SPARK_PACKAGES = ",".join([
    # The Kafka source of 4.0.1 needs a token provider Maven Central does
    # not serve here; 4.0.0's works with pyspark 4.0.1.
    "org.apache.spark:spark-sql-kafka-0-10_2.13:4.0.0",
    "org.apache.spark:spark-avro_2.13:4.0.1",
    "io.delta:delta-spark_2.13:4.0.0",
])
TICKS = os.sysconf("SC_CLK_TCK")


def schema_json(stack):
    with urllib.request.urlopen(f"{stack.registry}/subjects/{TOPIC}-value/versions/latest") as resp:
        return json.load(resp)["schema"]


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def spark_session(work):
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[2]").appName("spark-beside")
            .config("spark.jars.packages", SPARK_PACKAGES)
            .config("spark.jars.ivy", str(pathlib.Path.home() / ".cache" / "tributary" / "ivy"))
            .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
            .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
            .config("spark.driver.memory", "4g")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.local.dir", str(work / "spark-tmp"))
            .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_job(spark, bootstrap, schema, table, checkpoint, windows):
    """(wall seconds, JVM CPU-seconds, the JVM's peak RSS in MiB so far)
    of one available-now query."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import from_avro
    raw = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", bootstrap)
           .option("subscribe", TOPIC).option("startingOffsets", "earliest").load())
    # The Confluent wire format: a magic byte and a 4-byte schema id before the Avro body.
    rows = raw.select(from_avro(F.expr("substring(value, 6)"), schema).alias("e"),
                      "partition", "offset").select("e.*", "partition", "offset")
    if windows:
        rows = (rows.withWatermark("ts", "10 seconds").groupBy(F.window("ts", "1 minute"))
                .count().select(F.col("window.start").alias("window_start"),
                                F.col("window.end").alias("window_end"), "count"))
    jvm = spark.sparkContext._gateway.proc.pid
    cpu_before, started = cpu_seconds(jvm), time.monotonic()
    query = (rows.writeStream.format("delta").outputMode("append").option("checkpointLocation", str(checkpoint))
             .trigger(availableNow=True).start(str(table)))
    query.awaitTermination()
    wall = time.monotonic() - started
    return wall, cpu_seconds(jvm) - cpu_before, peak_rss_mib(jvm)


def main():
    wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
    binary = os.environ["TRIBUTARY_BIN"]
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        cluster = KafkaCluster(work / "kafka", jit=True)
        stack = DevStack(binary, [f"{TOPIC}:{PARTITIONS}"], kafka=cluster)
        try:
            # About 300,000 records a second is what the native producer keeps up
            # beside the broker here.
            sent = produce_backlog(binary, stack, TOPIC, wanted, 300_000)
            schema = schema_json(stack)
            results = {}
            for job, extra in [
                ("drain", ""),
                ("windows", "event_time: {column: ts, watermark_delay: 10s}\n"
                            "window: {tumbling: {size: 1m}}\n"
                            "aggregations:\n  - {name: count, function: count}\n"),
            ]:
                spec = write_spec(work / f"{job}.yaml", pipeline=job, bootstrap=cluster.bootstrap, topic=TOPIC,
                                  registry=stack.registry, table=work / f"tributary-{job}",
                                  checkpoint=work / f"tributary-{job}-checkpoint", extra=extra)
                if job == "drain":
                    with_offset_columns(spec, TOPIC)
                results[("tributary", job)] = run_to_exit(binary, spec, spec.with_suffix(".log"))
            spark = spark_session(work)
            for job in ["drain", "windows"]:
                results[("spark", job)] = spark_job(spark, cluster.bootstrap, schema, work / f"spark-{job}",
                                                    work / f"spark-{job}-checkpoint", job == "windows")
            spark.stop()
        finally:
            stack.stop()
            cluster.close()

        con = duck()
        rows, offsets = con.sql(f"select count(*), count(distinct (kafka_partition, kafka_offset)) "
                                f"from delta_scan('{work / 'tributary-drain'}')").fetchone()
        assert rows == sent and offsets == sent, f"Tributary drain: {rows} rows, {offsets} offsets, {sent} sent"
        theirs = con.sql(f"select count(*), count(distinct (\"partition\", \"offset\")) "
                         f"from delta_scan('{work / 'spark-drain'}')").fetchone()
        assert theirs == (sent, sent), f"Spark drain: {theirs} of {sent}"
        windows = {}
        for engine in ["tributary", "spark"]:
            windows[engine] = sorted(con.sql(
                f"select epoch_ms(window_start), count from delta_scan('{work / f'{engine}-windows'}')"
            ).fetchall())
        assert windows["tributary"] == windows["spark"], (
            f"the window tables differ: {len(windows['tributary'])} and {len(windows['spark'])} windows, "
            f"first differences {[w for w in windows['tributary'] if w not in windows['spark']][:3]} / "
            f"{[w for w in windows['spark'] if w not in windows['tributary']][:3]}")

        print(f"spark beside tributary: {sent} records of the 10-field schema in {PARTITIONS} partitions, "
              f"Apache Kafka in its own process; Spark local[2]")
        for job in ["drain", "windows"]:
            (t_wall, t_cpu, t_rss), (s_wall, s_cpu, s_rss) = results[("tributary", job)], results[("spark", job)]
            print(f"  {job:8} Tributary {sent / t_wall:>10,.0f} rows/s, {t_cpu / sent * 1e6:6.2f} CPU-s per M rows, "
                  f"peak RSS {t_rss:5.0f} MiB | Spark {sent / s_wall:>10,.0f} rows/s, "
                  f"{s_cpu / sent * 1e6:6.2f} CPU-s per M rows, peak RSS {s_rss:5.0f} MiB | "
                  f"Tributary / Spark: {s_wall / t_wall:.1f}x the rate, {s_cpu / t_cpu:.1f}x less CPU")
        print(f"  windows: both tables hold the same {len(windows['spark'])} windows with the same counts; "
              f"both drains hold every record once", flush=True)


if __name__ == "__main__":
    main()
