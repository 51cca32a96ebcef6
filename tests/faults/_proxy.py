"""A fault-injecting HTTP proxy on 127.0.0.1 between boto3 and moto's S3 server.

Requests are forwarded byte for byte (keep-alive and `Expect: 100-continue` included); a rule
matching a request's method and path can instead
- delay it (a slow endpoint; past LT_SSL_S3_READ_TIMEOUT it is a read timeout),
- answer it with an S3 error status itself (503 SlowDown, 500 InternalError),
- drop the connection after the request head (a connection reset mid-request),
- stall it: forward the head and half the body, then hold until released (mid-upload),
and `down()` / `up()` take the whole endpoint away (connections refused, open ones reset).
Loopback only; every wait is bounded.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field

_STATUS_TEXT = {500: "Internal Server Error", 503: "Slow Down"}
_ERROR_CODE = {500: "InternalError", 503: "SlowDown"}
STALL_LIMIT_S = 60.0


@dataclass
class Rule:
    method: str  # "PUT", "POST", ... or "*"
    path: str  # regex searched in the request target (path and query)
    action: str  # delay | status | drop | stall
    times: int | None = 1  # how many matching requests it applies to (None: all)
    skip: int = 0  # let this many matching requests through first
    delay: float = 0.0
    status: int = 503
    hits: int = 0
    seen: int = 0
    hit: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, target: str) -> bool:
        return (self.method in ("*", method)) and re.search(self.path, target) is not None


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.rules: list[Rule] = []
        self.requests: list[tuple[float, str, str, str]] = []  # (time, method, target, action)
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.up()

    # ------------------------------------------------------------------ control

    def add(self, **kw) -> Rule:
        rule = Rule(**kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            for r in self.rules:
                r.release.set()
            self.rules.clear()

    def up(self) -> None:
        if self._listener is not None:
            return
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        """The endpoint goes away: new connections are refused, open ones are reset."""
        s, self._listener = self._listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            socks = list(self._socks)
        for c in socks:
            _close(c)

    def close(self) -> None:
        self.clear()
        self.down()

    # ------------------------------------------------------------------ plumbing

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.add(s)

    def _untrack(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        _close(s)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed: down()
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _match(self, method: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, target):
                    rule.seen += 1
                    if rule.seen <= rule.skip:
                        continue
                    if rule.times is not None and rule.hits >= rule.times:
                        continue
                    rule.hits += 1
                    return rule
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        buf = b""
        try:
            client.settimeout(STALL_LIMIT_S)
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    raise RuntimeError("FaultProxy does not forward chunked request bodies")
                length = int(headers.get("content-length", "0"))
                rule = self._match(method, target)
                action = rule.action if rule else "pass"
                self.requests.append((time.time(), method, target, action))
                if action == "drop":
                    return
                if action == "status":
                    code = rule.status
                    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{_ERROR_CODE.get(code, "InternalError")}'
                            f"</Code><Message>injected by FaultProxy</Message><RequestId>fault</RequestId></Error>").encode()
                    client.sendall(f"HTTP/1.1 {code} {_STATUS_TEXT.get(code, 'Error')}\r\nContent-Type: application/xml\r\n"
                                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                                   + (b"" if method == "HEAD" else body))
                    return
                if action == "delay":
                    time.sleep(rule.delay)
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                    upstream.settimeout(None)
                    self._track(upstream)
                    threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
                upstream.sendall(head + b"\r\n\r\n")
                stall_at = length // 2 if action == "stall" else None
                sent = 0
                while sent < length:
                    if not buf:
                        buf = client.recv(65536)
                        if not buf:
                            return
                    take = buf[: length - sent]
                    if stall_at is not None and sent + len(take) >= stall_at:
                        take = take[: stall_at - sent]
                        upstream.sendall(take)
                        rule.hit.set()
                        rule.release.wait(STALL_LIMIT_S)
                        return  # both sides are closed: the upload never completes
                    upstream.sendall(take)
                    sent += len(take)
                    buf = buf[len(take):]
                if stall_at is not None:  # an empty body: stall after the head
                    rule.hit.set()
                    rule.release.wait(STALL_LIMIT_S)
                    return
        except (OSError, RuntimeError, ValueError):
            return
        finally:
            self._untrack(client)
            if upstream is not None:
                self._untrack(upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._untrack(dst)
            self._untrack(src)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
