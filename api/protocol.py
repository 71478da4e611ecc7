"""uvicorn's httptools protocol, sending each response in one write.

uvicorn writes a response's head and its body separately: two `send` system calls, and on loopback
two wake-ups of the client, per request. Small answers (an entitlement check) are most of the
server's work, so the protocol here holds what a response writes and sends it at once when the
response completes (or, for a streamed one, at the end of the event loop's turn).
"""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Coalescing:
    """A transport whose writes wait for `flush` (made at the latest in the event loop's next turn)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport, self._pending = transport, []  # type: ignore[var-annotated]
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Coalescing(transport))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
