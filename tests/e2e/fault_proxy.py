"""An HTTP proxy in front of moto's S3 server that injects the faults a real
object store shows and moto never does: a request answered with a 5xx after
it was carried out (an ambiguous commit), or before (a plain failure or
throttling: `SlowDown`).

Rules match a method and a path pattern; each rule faults every `every`-th
matching request. Counters say what was injected, so a test can assert that
the faults it relies on really happened."""

import http.client
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import free_port

# A Delta log commit: _delta_log/<20 digits>.json
LOG_COMMIT = r"/_delta_log/\d{20}\.json$"


@dataclass
class Rule:
    method: str
    path: str
    every: int
    # "after": forward the request, then answer `status` (it did happen);
    # "before": answer `status` without forwarding (it did not).
    mode: str
    status: int = 503
    # The S3 error code answered: SlowDown is how S3 throttles.
    code: str = "ServiceUnavailable"
    # Only requests whose body contains this (e.g. an operation name).
    body_contains: bytes | None = None
    seen: int = 0
    injected: list = field(default_factory=list)

    def error_body(self):
        return f"<Error><Code>{self.code}</Code><Message>injected</Message></Error>".encode()


class FaultProxy:
    def __init__(self, upstream_port, rules):
        self.upstream_port = upstream_port
        self.rules = rules
        self.lock = threading.Lock()
        self.port = free_port()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                rule = proxy._fault_for(self.command, self.path, body)
                if rule is not None and rule.mode == "before":
                    return self._answer(rule.status, {}, rule.error_body())
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                if rule is not None:
                    return self._answer(rule.status, {}, rule.error_body())
                self._answer(status, headers, data)

            def _answer(self, status, headers, data):
                self.send_response(status)
                # A HEAD answer states the object's length, not the body's.
                length = next((v for k, v in headers if k.lower() == "content-length"), None)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that hung up (a timed-out request) is no test failure

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def _fault_for(self, method, path, body):
        with self.lock:
            for rule in self.rules:
                if method != rule.method or not re.search(rule.path, path.split("?")[0]):
                    continue
                if rule.body_contains is not None and rule.body_contains not in body:
                    continue
                rule.seen += 1
                if rule.seen % rule.every == 0:
                    rule.injected.append(path)
                    return rule
        return None

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            forwarded = {k: v for k, v in headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            forwarded["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=forwarded)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
