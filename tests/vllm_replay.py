"""A stand-in for a vLLM server's runtime LoRA routes: it answers each POST with the next of
the recorded replies it was given (the last one again once they run out) and keeps what it was
sent, for the tests of pushing adapters to vLLM."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RECORDED = json.loads((Path(__file__).parent / "recorded" / "vllm_lora_adapter.json").read_text())


class VllmReplay:
    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.received: list[dict[str, Any]] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                replay.received.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("authorization"),
                        "body": json.loads(self.rfile.read(length) or b"{}"),
                    }
                )
                name = replay.replies.pop(0) if len(replay.replies) > 1 else replay.replies[0]
                reply = RECORDED[name]
                if "json" in reply:
                    payload, kind = json.dumps(reply["json"]).encode(), "application/json"
                else:
                    payload, kind = reply["body"].encode(), "text/plain; charset=utf-8"
                self.send_response(reply["status"])
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> VllmReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
