"""`tributary demo` runs on its embedded defaults, and its table reads back in DuckDB."""

import re
import subprocess

from conftest import duck


def test_demo_table_reads_back_in_duckdb(binary, tmp_path):
    demo_dir = tmp_path / "demo"
    result = subprocess.run(
        [binary, "demo", "--dir", str(demo_dir), "--duration", "4s", "--rate", "2000"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    produced = int(re.search(r"records produced\s+(\d+)", result.stdout).group(1))
    rows = int(re.search(r"rows in the table\s+(\d+)", result.stdout).group(1))
    dead = int(re.search(r"dead letters\s+(\d+)", result.stdout).group(1))
    assert produced >= 7000
    assert rows + dead == produced

    con = duck()
    table = demo_dir / "lake" / "clicks"
    assert con.execute(f"select count(*) from delta_scan('{table}')").fetchone()[0] == rows
    dead_rows = con.execute(f"select count(*) from delta_scan('{demo_dir}/lake/clicks_dead_letters')").fetchone()[0]
    assert dead_rows == dead > 0
    # Duplicates are in the stream on purpose (2%), and kept until dedup is configured.
    distinct = con.execute(f"select count(distinct event_id) from delta_scan('{table}')").fetchone()[0]
    assert distinct < rows
    assert (demo_dir / "clicks.yaml").exists()
