"""A schema registry that requires credentials (the development registry
with basic auth): a wrong password ends in a clear error, the right one
works, from an environment variable or a mounted file, and the secret
appears nowhere in logs, progress events or the table."""

import json
import os
import subprocess
import time
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


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def certificates(directory):
    """A private CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=directory)
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=directory)


def mutual_tls_proxy(directory, upstream):
    """An HTTPS front for the development registry that requires a client
    certificate signed by the test CA (Python's ssl module, not Tributary's)."""
    import http.server
    import ssl
    import threading

    class Forward(http.server.BaseHTTPRequestHandler):
        def forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            request = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                             headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    status, payload, kind = resp.status, resp.read(), resp.headers.get("Content-Type")
            except urllib.error.HTTPError as e:
                status, payload, kind = e.code, e.read(), e.headers.get("Content-Type")
            self.send_response(status)
            self.send_header("Content-Type", kind or "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = forward

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    context.load_verify_locations(directory / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("dev_stack", [["pings:2"]], indirect=True)
def test_a_registry_requiring_client_certificates(binary, dev_stack, tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    certificates(certs)
    proxy = mutual_tls_proxy(certs, dev_stack.registry)
    try:
        url = f"https://127.0.0.1:{proxy.server_address[1]}"
        schema_id = dev_stack.register("pings-value", SCHEMA)
        dev_stack.produce("pings", [(None, confluent(schema_id, SCHEMA, {"n": n}), None) for n in range(200)])

        def spec_with(name, tls):
            table = tmp_path / "lake" / name
            spec = write_spec(tmp_path / f"{name}.yaml", pipeline=name, bootstrap=dev_stack.bootstrap, topic="pings",
                              registry=url, table=table, checkpoint=tmp_path / f"ckpt-{name}")
            spec.write_text(spec.read_text().replace(f"url: '{url}'", f"url: '{url}'\n    ca_file: '{certs / 'ca.pem'}'{tls}"))
            return spec, table

        # Without a client certificate the handshake is refused: batches fail
        # and are retried (as for any registry outage), saying why; nothing lands.
        spec, table = spec_with("anonymous", "")
        log = tmp_path / "anonymous.log"
        refused = subprocess.Popen([binary, "run", "--spec", str(spec), "--admin-addr", "127.0.0.1:0"],
                                   stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        try:
            deadline = time.time() + 60
            while "batch failed" not in log.read_text() and time.time() < deadline:
                time.sleep(0.5)
        finally:
            refused.terminate()
            refused.wait(30)
        assert "batch failed" in log.read_text() and "CertificateRequired" in log.read_text(), log.read_text()[-3000:]
        assert not (table / "_delta_log").exists() or duck().execute(
            f"select count(*) from delta_scan('{table}')").fetchone()[0] == 0

        spec, table = spec_with("mutual", f"\n    client_cert_file: '{certs / 'client.pem'}'"
                                          f"\n    client_key_file: '{certs / 'client.key'}'")
        accepted = run_spec(binary, spec, timeout=120)
        assert accepted.returncode == 0, accepted.stderr[-2000:]
        assert duck().execute(f"select count(*), sum(n) from delta_scan('{table}')").fetchone() == (200, sum(range(200)))
    finally:
        proxy.shutdown()
