"""A local stand-in for an OpenAI-compatible chat-completions server (no model is reachable in tests).

`ChatStandin()` serves `POST /v1/chat/completions` on 127.0.0.1 (ephemeral port) from a thread, records
every request, and answers with the next scripted reply: a text, a tool call, or an HTTP error status.

    with ChatStandin(replies=["We deliver on Sundays."]) as chat:
        ... chat.base_url ...          # "http://127.0.0.1:PORT/v1"
        chat.requests[0]["json"]       # what the engine sent
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatStandin:
    def __init__(self, replies: list[str | dict[str, Any] | int] | None = None) -> None:
        """replies: str -> assistant text; {"tool": name, "arguments": {...}} -> a tool call;
        int -> that HTTP status. The last reply repeats once the others are used up."""
        self.replies = list(replies or ["I can help with that."])
        self.requests: list[dict[str, Any]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                standin.requests.append({"path": self.path, "headers": dict(self.headers), "json": parsed})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                reply = standin.replies.pop(0) if len(standin.replies) > 1 else standin.replies[0]
                if isinstance(reply, int):
                    self._send(reply, {"error": {"message": "scripted failure"}})
                    return
                message: dict[str, Any] = {"role": "assistant", "content": None}
                if isinstance(reply, str):
                    message["content"] = reply
                else:
                    message["tool_calls"] = [
                        {
                            "id": "call_standin",
                            "type": "function",
                            "function": {
                                "name": reply["tool"],
                                "arguments": json.dumps(reply.get("arguments", {})),
                            },
                        }
                    ]
                self._send(
                    200,
                    {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion",
                        "model": (parsed or {}).get("model", "standin"),
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    },
                )

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ChatStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
