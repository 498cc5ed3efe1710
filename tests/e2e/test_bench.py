"""`tributary bench` as smoke tests: small sizes, no timing assertions. Each
benchmark checks its own result (no lost row, every spoiled record and only
those in the dead letters) and fails the run when it is wrong."""

import re
import subprocess


def test_bench_decode_isolates_malformed_records(binary):
    result = subprocess.run([binary, "bench", "decode", "--rows", "20000"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rates = dict(re.findall(r"decode with\s+(\d+) % malformed:\s+(\d+) rows/s", result.stdout))
    assert set(rates) == {"1", "10"}, result.stdout
    assert all(int(r) > 0 for r in rates.values())
