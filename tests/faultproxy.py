"""A small HTTP proxy in front of the real wiki that injects the faults a real wiki cannot be
made to produce on demand: 5xx and 429 with Retry-After, slow answers, truncated bodies.
It can also hold the n-th request so a test can kill the client mid-run."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

Fault = Callable[[BaseHTTPRequestHandler], bool]  # returns True when it answered the request


def status(code: int, retry_after: int | None = None) -> Fault:
    def answer(handler: BaseHTTPRequestHandler) -> bool:
        handler.send_response(code)
        if retry_after is not None:
            handler.send_header("Retry-After", str(retry_after))
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return True

    return answer


def slow(seconds: float) -> Fault:
    def answer(handler: BaseHTTPRequestHandler) -> bool:
        time.sleep(seconds)
        return False  # then forward as usual (the client has given up by then)

    return answer


def truncated_json(lie_about_length: bool) -> Fault:
    """Half a JSON body; with ``lie_about_length`` the Content-Length promises the whole."""

    def answer(handler: BaseHTTPRequestHandler) -> bool:
        body = b'{"batchcomplete": true, "query": {"recentchanges": [{"type": "ed'
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body) * (2 if lie_about_length else 1)))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
        handler.close_connection = True
        return True

    return answer


def rewrite_json(change: Callable[[dict], None]) -> Fault:
    """Forward to the wiki, then let ``change`` edit the decoded JSON body before answering."""

    def answer(handler: BaseHTTPRequestHandler) -> bool:
        handler.rewrite = change  # type: ignore[attr-defined]
        return False

    return answer


class FaultProxy:
    """Forwards to ``upstream`` (an api.php URL); ``faults[n]`` answers the n-th request (1-based)
    instead, ``hold_at`` blocks the n-th request until ``release()``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: dict[int, Fault] = {}
        self.always: Fault | None = None
        self.count = 0
        self.hold_at: int | None = None
        self.held = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self, "GET")

            def do_POST(self) -> None:
                proxy._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api.php"

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self.count += 1
            number = self.count
        if self.hold_at is not None and number >= self.hold_at:
            self.held.set()
            self._release.wait(timeout=120)
            handler.close_connection = True
            return
        fault = self.faults.get(number) or self.always
        if fault is not None and fault(handler):
            return
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        query = handler.path.split("?", 1)[1] if "?" in handler.path else ""
        url = self.upstream + ("?" + query if query else "")
        headers = {
            k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")
        }
        upstream = requests.request(method, url, data=body, headers=headers, timeout=60)
        content = upstream.content
        change = getattr(handler, "rewrite", None)
        if change is not None and upstream.headers.get("Content-Type", "").startswith(
            "application/json"
        ):
            body = json.loads(content)
            change(body)
            content = json.dumps(body).encode()
        handler.send_response(upstream.status_code)
        for key, value in upstream.headers.items():
            if key.lower() not in (
                "content-length",
                "content-encoding",
                "transfer-encoding",
                "connection",
            ):
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)
