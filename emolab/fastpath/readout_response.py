"""Putting a readout into vLLM's own response, on its way out: the ASGI ``send`` of one request, wrapped.

A whole JSON reply is held until it is complete, then gets ``emotion_readout`` (and a new content length);
a stream of server-sent events passes through event by event, except that the last event before
``data: [DONE]`` is held until the readout is there and then carries it, as the HF backend's last chunk does.
An error reply passes through untouched and waits for nothing.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.types import Message, Send

from emolab.serve.schema import READOUT_RESPONSE

__all__ = ["ReadoutResponse"]

_DONE = b"data: [DONE]"


class ReadoutResponse:
    def __init__(self, send: Send, readout: Callable[[], Awaitable[dict]]) -> None:
        self._send, self._readout = send, readout
        self._start: Message | None = None
        self._stream = False
        self._passthrough = False
        self._body = bytearray()
        self._held: bytes | None = None  # the last complete event of a stream, not yet sent

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = {k.lower(): v for k, v in message.get("headers", [])}
            self._stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            self._passthrough = message.get("status", 200) != 200
            if self._stream or self._passthrough:
                await self._send(message)
            else:
                self._start = message
            return
        if kind != "http.response.body" or self._passthrough:
            await self._send(message)
            return
        more = message.get("more_body", False)
        self._body += message.get("body", b"")
        if self._stream:
            await self._events(final=not more)
        elif not more:
            await self._whole()

    async def _whole(self) -> None:
        body = bytes(self._body)
        try:
            reply = json.loads(body)
            reply[READOUT_RESPONSE] = await self._readout()
            body = json.dumps(reply).encode()
        except (json.JSONDecodeError, TypeError):
            pass  # not a JSON object: send it as it came
        assert self._start is not None
        headers = [(k, v) for k, v in self._start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _events(self, final: bool) -> None:
        out = bytearray()
        while b"\n\n" in self._body:
            event, _, rest = bytes(self._body).partition(b"\n\n")
            self._body = bytearray(rest)
            event += b"\n\n"
            if event.startswith(_DONE):
                if self._held is not None:
                    out += await self._with_readout(self._held)
                    self._held = None
                out += event
                continue
            if self._held is not None:
                out += self._held
            self._held = event
        if final:
            if self._held is not None:
                out += self._held
                self._held = None
            out += bytes(self._body)
            self._body.clear()
        if out or final:
            await self._send({"type": "http.response.body", "body": bytes(out), "more_body": not final})

    async def _with_readout(self, event: bytes) -> bytes:
        text = event.decode()
        if not text.startswith("data: "):
            return event
        try:
            chunk = json.loads(text[len("data: "):])
        except json.JSONDecodeError:
            return event
        if not isinstance(chunk, dict) or "error" in chunk:
            return event
        chunk[READOUT_RESPONSE] = await self._readout()
        return f"data: {json.dumps(chunk)}\n\n".encode()
