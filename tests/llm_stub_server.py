"""A real HTTP server on 127.0.0.1 that speaks just enough of the OpenAI and Gemini wire formats.

Tests point the real `openai` and `google-genai` clients at it through `base_url`, script what it answers,
and read back what it received (paths, headers, JSON bodies). Nothing of ours is patched.

Routes:
  POST /v1/chat/completions                       OpenAI chat completion
  POST /{version}/models/{model}:generateContent  Gemini (the SDK picks `version`, e.g. v1beta)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_GEMINI_PATH = re.compile(r"^/[^/]+/models/(?P<model>[^/:]+):generateContent$")
_OPENAI_PATH = "/v1/chat/completions"
_GEMINI_STATUS = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 401: "UNAUTHENTICATED"}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: assistant text with status 200, or an HTTP error status; sent after `delay_s`."""

    content: str = ""
    status: int = 200
    delay_s: float = 0.0

    @classmethod
    def error(cls, status: int) -> Reply:
        return cls(status=status)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class StubLLMServer:
    """Answers each request with the next scripted Reply; an exhausted script answers 500 and says so."""

    script: deque[Reply] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def gemini_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def count(self) -> int:
        return len(self.received)

    def push(self, *replies: Reply | str) -> None:
        with self._lock:
            self.script.extend(Reply(r) if isinstance(r, str) else r for r in replies)

    def reset(self) -> None:
        with self._lock:
            self.script.clear()
            self.received.clear()

    def next_reply(self, received: Received) -> Reply:
        with self._lock:
            self.received.append(received)
            return self.script.popleft() if self.script else Reply("stub script exhausted", status=500)

    def __enter__(self) -> StubLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _openai_body(reply: Reply, model: str) -> dict[str, Any]:
    if reply.status != 200:
        return {"error": {"message": reply.content or f"stub error {reply.status}", "type": "stub_error",
                          "code": str(reply.status), "param": None}}
    return {
        "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": reply.content, "refusal": None}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _gemini_body(reply: Reply, model: str) -> dict[str, Any]:
    if reply.status != 200:
        return {"error": {"code": reply.status, "message": reply.content or f"stub error {reply.status}",
                          "status": _GEMINI_STATUS.get(reply.status, "UNKNOWN")}}
    return {
        "candidates": [{"index": 0, "finishReason": "STOP",
                        "content": {"role": "model", "parts": [{"text": reply.content}]}}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
        "modelVersion": model,
    }


def _handler_for(server: StubLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.loads(raw or b"{}")
            gemini = _GEMINI_PATH.match(path)
            if path != _OPENAI_PATH and not gemini:
                self._send(404, {"error": {"message": f"no route {path}"}})
                return
            reply = server.next_reply(Received(path, {k.lower(): v for k, v in self.headers.items()}, body))
            time.sleep(reply.delay_s)
            if gemini:
                self._send(reply.status, _gemini_body(reply, gemini["model"]))
            else:
                self._send(reply.status, _openai_body(reply, body.get("model", "")))

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

    return Handler
