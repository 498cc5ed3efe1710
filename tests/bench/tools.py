"""What the bench scripts share: `tributary bench produce`, a drain run to
its exit, and a process's peak memory."""

import os
import re
import subprocess
import time


def produce(binary, stack, topic, rate, seconds):
    """`tributary bench produce`: the 10-field benchmark record at a steady
    `rate` for `seconds`, from a native producer, so that the load generator
    leaves the CPU to the pipeline. Returns the records sent and the rate
    reached."""
    out = subprocess.run([binary, "bench", "produce", "--bootstrap-servers", stack.bootstrap, "--topic", topic,
                          "--registry-url", stack.registry, "--rate", str(rate), "--seconds", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 600)
    assert out.returncode == 0, out.stderr[-3000:]
    sent, reached = re.search(r"bench produce: (\d+) records .* at (\d+) records/s", out.stdout).groups()
    return int(sent), int(reached)


def produce_backlog(binary, stack, topic, records, rate):
    """About `records` records, at most `rate` a second; returns the records sent."""
    seconds = max(1, -(-records // rate))
    return produce(binary, stack, topic, records // seconds, seconds)[0]


def peak_rss_mib(pid):
    """A running process's peak resident memory (`VmHWM`)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def with_offset_columns(spec, topic, timestamp=None):
    """Adds the Kafka partition and offset as columns to a spec written by
    `write_spec`, so that the table can be checked record by record, and
    the Kafka timestamp as the column `timestamp` names, when it is given."""
    columns = "partition: kafka_partition, offset: kafka_offset" + (f", timestamp: {timestamp}" if timestamp else "")
    spec.write_text(spec.read_text().replace(f"    topic: {topic}\n", f"    topic: {topic}\n  columns: {{{columns}}}\n"))


def run_to_exit(binary, specs, log):
    """Runs `tributary run` over `specs` (a spec file or a directory of them)
    until it exits, which it must do with 0; returns its wall seconds,
    CPU-seconds and peak RSS in MiB (its rusage)."""
    started = time.monotonic()
    proc = subprocess.Popen([binary, "run", "--spec", str(specs), "--admin-addr", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-3000:]
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
