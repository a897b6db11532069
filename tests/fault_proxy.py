"""A small HTTP proxy in front of the test S3 server that misbehaves on cue, as a real store or
network does: it goes down (stops listening: connections are refused), refuses (closes a
connection unanswered), stalls (reads the request and never
answers), resets (RST after reading the request), answers 503 SlowDown-like errors, or forwards
a request and then drops the answer (the write happened; the client cannot know).

A fault starts when a request matches (method and a substring of the path; after `skip` such
requests) and lasts `seconds` (None: for `count` requests), for every request (an outage) or the
matching ones only; then the proxy forwards again."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Fault:
    mode: str  # down | refuse | stall | reset | error | drop-answer
    method: str = ""  # "" any
    path: str = ""  # a substring of the request's path
    skip: int = 0  # matching requests let through first
    seconds: float | None = None  # how long it lasts once started
    count: int = 1  # without seconds: how many requests it hits
    everything: bool = True  # once started: every request fails (an outage), or only matching ones
    started: float | None = None
    hit: int = 0

    def applies(self, method: str, path: str) -> bool:
        now = time.monotonic()
        matches = (not self.method or method == self.method) and self.path in path
        if self.started is not None and not self.everything and not matches:
            return False
        if self.started is None:
            if not matches:
                return False
            if self.skip:
                self.skip -= 1
                return False
            self.started = now
        if self.seconds is not None:
            return now - self.started < self.seconds
        if self.hit < self.count:
            self.hit += 1
            return True
        return False


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.split("//", 1)[1]
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str]] = []  # (method, path, what happened)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionError, socket.timeout):
                    self.close_connection = True

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy.fault_for(self.command, self.path)
                mode = fault.mode if fault else "forward"
                proxy.record(self.command, self.path, mode)
                if mode == "down":
                    self._abort(reset=True)
                    proxy.go_down(fault)
                elif mode == "refuse":
                    self._abort(reset=False)
                elif mode == "reset":
                    self._abort(reset=True)
                elif mode == "stall":  # a server that never answers: until the fault ends, or the proxy
                    until = fault.started + fault.seconds if fault.seconds is not None else time.monotonic() + 600
                    proxy.stopping.wait(max(0.0, until - time.monotonic()))
                    self._abort(reset=False)
                elif mode == "error":
                    self._error()
                else:
                    status, headers, data = proxy.forward(self.command, self.path, self.headers, body)
                    if mode == "drop-answer":
                        self._abort(reset=True)
                        return
                    self.send_response_only(status)
                    for key, value in headers:
                        if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                            self.send_header(key, value)
                    length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                    self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)

            def _abort(self, reset: bool) -> None:
                if reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _error(self) -> None:
                data = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>")
                self.send_response_only(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.handler = Handler
        self.server = self._serve(0)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.down: threading.Thread | None = None

    def _serve(self, port: int) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), self.handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def go_down(self, fault: Fault) -> None:
        """Stop listening until the fault's time is up (connections are refused), then listen again."""
        if self.down is not None:
            return

        def outage() -> None:
            port = self.server.server_address[1]
            self.server.shutdown()
            self.server.server_close()
            self.stopping.wait(max(0.0, fault.started + (fault.seconds or 0) - time.monotonic()))
            if not self.stopping.is_set():
                self.server = self._serve(port)

        self.down = threading.Thread(target=outage, daemon=True)
        self.down.start()

    def add(self, mode: str, **kwargs: object) -> Fault:
        fault = Fault(mode, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.log.clear()

    def fault_for(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.applies(method, path):
                    return fault
        return None

    def record(self, method: str, path: str, what: str) -> None:
        with self.lock:
            self.log.append((method, path, what))

    def seen(self, what: str, matching: Callable[[str, str], bool] = lambda m, p: True) -> int:
        with self.lock:
            return sum(1 for m, p, w in self.log if w == what and matching(m, p))

    def forward(self, method: str, path: str, headers: object, body: bytes) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            connection.request(method, path, body=body or None,
                               headers={k: v for k, v in headers.items() if k.lower() not in ("connection", "expect")})
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.down is not None:
            self.down.join()
        self.server.shutdown()
        self.server.server_close()
