"""A schema registry that requires credentials (the development registry
with basic auth): a wrong password ends in a clear error, the right one
works, from an environment variable or a mounted file, and the secret
appears nowhere in logs, progress events or the table."""

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import DevStack, confluent, duck, run_spec, write_spec
from test_admin import admin_url

SECRET = "Tr1butary-s3cret-pw"
SCHEMA = {"type": "record", "name": "Ping", "fields": [{"name": "n", "type": "long"}]}


@pytest.fixture
def secured(binary, kafka):
    stack = DevStack(binary, ["pings:2"], registry_basic_auth=f"svc:{SECRET}", kafka=kafka)
    yield stack
    stack.stop()


def test_wrong_credentials_fail_clearly_and_right_ones_work_without_leaking(binary, secured, tmp_path):
    # The registry really refuses anonymous requests.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{secured.registry}/subjects", timeout=10)
    assert refused.value.code == 401

    schema_id = secured.register("pings-value", SCHEMA)
    secured.produce("pings", [(None, confluent(schema_id, SCHEMA, {"n": n}), None) for n in range(500)])
    table = tmp_path / "lake" / "pings"
    spec = write_spec(tmp_path / "pings.yaml", pipeline="pings", bootstrap=secured.bootstrap, topic="pings",
                      registry=secured.registry, table=table, checkpoint=tmp_path / "ckpt")
    spec.write_text(spec.read_text().replace(f"url: '{secured.registry}'",
                                             f"url: '{secured.registry}'\n    basic_auth_env: REGISTRY_AUTH"))
    assert "basic_auth_env: REGISTRY_AUTH" in spec.read_text()
    progress = tmp_path / "progress.jsonl"

    wrong = run_spec(binary, spec, env={"REGISTRY_AUTH": "svc:not-the-password", "RUST_LOG": "debug"},
                     extra=("--progress-json", str(progress)))
    assert wrong.returncode != 0
    assert "refused the credentials" in wrong.stderr and "(401)" in wrong.stderr, wrong.stderr[-2000:]
    assert "not-the-password" not in wrong.stderr + wrong.stdout
    assert not (table / "_delta_log").exists() or duck().execute(
        f"select count(*) from delta_scan('{table}')").fetchone()[0] == 0

    right = run_spec(binary, spec, env={"REGISTRY_AUTH": f"svc:{SECRET}", "RUST_LOG": "debug"},
                     extra=("--progress-json", str(progress)))
    assert right.returncode == 0, right.stderr[-2000:]
    assert duck().execute(f"select count(*), sum(n) from delta_scan('{table}')").fetchone() == (500, sum(range(500)))

    # The same from a mounted secret file, with a trailing newline.
    secret_file = tmp_path / "registry-auth"
    secret_file.write_text(f"svc:{SECRET}\n")
    from_file = tmp_path / "from-file.yaml"
    from_file.write_text(spec.read_text().replace("basic_auth_env: REGISTRY_AUTH", f"basic_auth_file: '{secret_file}'")
                         .replace(str(table), str(tmp_path / "lake" / "pings2"))
                         .replace(str(tmp_path / "ckpt"), str(tmp_path / "ckpt2")))
    again = run_spec(binary, from_file, env={"RUST_LOG": "debug"})
    assert again.returncode == 0, again.stderr[-2000:]
    assert duck().execute(f"select count(*) from delta_scan('{tmp_path / 'lake' / 'pings2'}')").fetchone()[0] == 500

    # A running pipeline's admin endpoints, scraped while it runs.
    log = tmp_path / "running.log"
    continuous = tmp_path / "continuous.yaml"
    continuous.write_text(spec.read_text().replace("available_now: true", "available_now: false"))
    running = subprocess.Popen([binary, "run", "--spec", str(continuous), "--admin-addr", "127.0.0.1:0"],
                               stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                               env=dict(os.environ, REGISTRY_AUTH=f"svc:{SECRET}", RUST_LOG="debug"))
    try:
        url = admin_url(log)
        served = []
        for path in ("/metrics", "/progress", "/readyz", "/healthz"):
            try:
                with urllib.request.urlopen(url + path, timeout=10) as resp:
                    served.append(resp.read().decode())
            except urllib.error.HTTPError as e:
                served.append(e.read().decode())
        assert "tributary_" in served[0]
    finally:
        running.terminate()
        assert running.wait(30) == 0, log.read_text()[-2000:]

    # The secret is nowhere: not in logs (at debug level), progress events,
    # validate's output, admin endpoints, the checkpoint or the table's log.
    validate = subprocess.run([binary, "validate", str(spec)], capture_output=True, text=True,
                              env=dict(os.environ, REGISTRY_AUTH=f"svc:{SECRET}"))
    assert validate.returncode == 0, validate.stdout + validate.stderr
    delta_log = "".join(f.read_text() for f in (table / "_delta_log").glob("*.json"))
    written = [p.read_bytes() for p in (tmp_path / "ckpt").rglob("*") if p.is_file()]
    written += [p.read_bytes() for p in table.rglob("*") if p.is_file()]
    assert written
    assert not any(SECRET.encode() in data for data in written)
    for text in (right.stderr, right.stdout, again.stderr, progress.read_text(), validate.stdout, validate.stderr,
                 delta_log, log.read_text(), *served):
        assert SECRET not in text
    assert all(json.loads(line) for line in progress.read_text().splitlines())
