"""A fault-injecting reverse proxy in front of the S3 test server (moto).

It forwards every request unchanged (method, path and query, headers, body) and hands back the
upstream answer, except where its fault plan says to answer with an S3 error instead, as a
throttled or failing S3 would (``503 SlowDown``, ``500 InternalError``). The request body is
always read first, so the connection stays usable and the client sees a clean error response.

    with S3FaultProxy(s3_server.url, FailEveryNth(4)) as proxy:
        ...  # point a client at proxy.url
    assert proxy.faults > 0

Rules see each request as a :class:`ProxyRequest` and return the :class:`Fault` to answer with, or
``None`` to let it through; the first rule that answers a fault wins. Decisions are made under one
lock, so rules may keep plain state.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",  # the proxy answers 100-continue itself and forwards the whole body
}


@dataclass(frozen=True)
class Fault:
    status: int
    code: str
    message: str

    def body(self, request_id: str) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{self.message}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        ).encode()


SLOW_DOWN = Fault(503, "SlowDown", "Please reduce your request rate.")
INTERNAL_ERROR = Fault(500, "InternalError", "We encountered an internal error. Please try again.")


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names
    body_size: int

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    @property
    def range(self) -> str:
        return self.headers.get("range", "")

    @property
    def identity(self) -> tuple[str, str, str]:
        """What a retry of this request has in common with it (ranges tell apart ranged GETs)."""
        return (self.method, self.target, self.range)

    @property
    def is_upload_part(self) -> bool:
        return self.method == "PUT" and "partNumber" in self.query and "uploadId" in self.query

    @property
    def is_put_object(self) -> bool:
        query = self.query
        return self.method == "PUT" and "partNumber" not in query and "uploadId" not in query


class Rule(Protocol):
    def __call__(self, request: ProxyRequest) -> Fault | None: ...


Predicate = Callable[[ProxyRequest], bool]


def any_request(_request: ProxyRequest) -> bool:
    return True


class FailEveryNth:
    """Answer every ``n``-th matching request with a fault (cycling through ``faults``), but never
    fail a request whose previous attempt was failed here: a retry always gets through, so a
    client with two or more attempts always succeeds."""

    def __init__(
        self,
        n: int,
        faults: Iterable[Fault] = (SLOW_DOWN, INTERNAL_ERROR),
        when: Predicate = any_request,
    ):
        assert n >= 2, "n must be at least 2 so that retries can get through"
        self.n = n
        self.faults = list(faults)
        self.when = when
        self._seen = 0
        self._injected = 0
        self._just_failed: set[tuple[str, str, str]] = set()

    def __call__(self, request: ProxyRequest) -> Fault | None:
        if not self.when(request):
            return None
        identity = request.identity
        if identity in self._just_failed:
            self._just_failed.discard(identity)
            return None
        self._seen += 1
        if self._seen % self.n:
            return None
        self._just_failed.add(identity)
        fault = self.faults[self._injected % len(self.faults)]
        self._injected += 1
        return fault


class FailFirstAttempts:
    """Fail the first ``attempts`` tries of every distinct matching request."""

    def __init__(self, attempts: int, when: Predicate = any_request, fault: Fault = INTERNAL_ERROR):
        self.attempts = attempts
        self.when = when
        self.fault = fault
        self._tries: Counter[tuple[str, str, str]] = Counter()

    def __call__(self, request: ProxyRequest) -> Fault | None:
        if not self.when(request):
            return None
        self._tries[request.identity] += 1
        return self.fault if self._tries[request.identity] <= self.attempts else None


class FailMatching:
    """Fail every matching request after letting the first ``after`` of them through."""

    def __init__(
        self, when: Predicate = any_request, fault: Fault = INTERNAL_ERROR, after: int = 0
    ):
        self.when = when
        self.fault = fault
        self.after = after
        self._matched = 0

    def __call__(self, request: ProxyRequest) -> Fault | None:
        if not self.when(request):
            return None
        self._matched += 1
        return self.fault if self._matched > self.after else None


@dataclass(frozen=True)
class Exchange:
    method: str
    target: str
    status: int
    injected: bool
    range: str = ""  # the Range header, which tells apart ranged reads of one object


@dataclass
class _State:
    upstream_host: str
    upstream_port: int
    rules: list[Rule]
    lock: threading.Lock = field(default_factory=threading.Lock)
    log: list[Exchange] = field(default_factory=list)

    def decide(self, request: ProxyRequest) -> tuple[Fault | None, int]:
        with self.lock:
            number = len(self.log) + 1
            for rule in self.rules:
                fault = rule(request)
                if fault is not None:
                    self.log.append(
                        Exchange(request.method, request.target, fault.status, True, request.range)
                    )
                    return fault, number
            return None, number

    def record(self, request: ProxyRequest, status: int) -> None:
        with self.lock:
            self.log.append(Exchange(request.method, request.target, status, False, request.range))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool behaves as usual
    timeout = 60  # an idle kept-alive connection ends its thread eventually
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the exchanges are in proxy.log

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        request = ProxyRequest(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            len(body),
        )
        state = self.server.state
        fault, number = state.decide(request)
        if fault is not None:
            self._answer_fault(fault, f"barge-proxy-{number}")
            return
        try:
            status, reason, headers, payload = self._forward(request, body)
        except OSError as exc:  # upstream gone: answer as a gateway would
            state.record(request, 502)
            self._answer_fault(Fault(502, "BadGateway", str(exc)), f"barge-proxy-{number}")
            return
        state.record(request, status)
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        if self.command == "HEAD":
            length = next((v for k, v in headers if k.lower() == "content-length"), None)
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
        else:
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def _forward(
        self, request: ProxyRequest, body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        state = self.server.state
        conn = http.client.HTTPConnection(state.upstream_host, state.upstream_port, timeout=120)
        try:
            conn.putrequest(
                request.method, request.target, skip_host=True, skip_accept_encoding=True
            )
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body or request.method in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Connection", "close")
            conn.endheaders(body or None)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp.reason, resp.getheaders(), payload
        finally:
            conn.close()

    def _answer_fault(self, fault: Fault, request_id: str) -> None:
        payload = fault.body(request_id)
        self.send_response(fault.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class S3FaultProxy:
    """A context manager: a proxy on a free loopback port while the ``with`` block runs."""

    def __init__(self, upstream_url: str, *rules: Rule):
        parts = urlsplit(upstream_url)
        assert parts.scheme == "http" and parts.hostname and parts.port, upstream_url
        self._state = _State(parts.hostname, parts.port, list(rules))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the proxy is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def set_rules(self, *rules: Rule) -> None:
        with self._state.lock:
            self._state.rules = list(rules)

    @property
    def log(self) -> list[Exchange]:
        with self._state.lock:
            return list(self._state.log)

    @property
    def requests(self) -> int:
        """Requests received, faulted or forwarded."""
        return len(self.log)

    @property
    def faults(self) -> int:
        """Requests answered with an injected fault."""
        return sum(e.injected for e in self.log)

    def faults_where(self, predicate: Callable[[Exchange], bool]) -> int:
        return sum(e.injected and predicate(e) for e in self.log)

    def start(self) -> S3FaultProxy:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.state = self._state
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._server = None
        self._thread = None

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
