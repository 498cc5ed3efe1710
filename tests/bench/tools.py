"""What the bench scripts share: `tributary bench produce` and a process's
peak memory."""

import re
import subprocess


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
