"""Reading a request's body, as a hostile or slow client sends it.

`read_body(request)` is the one way the REST handlers read a body:
- a Content-Length over max_message_bytes is refused from the header (413), before a byte of the body is
  read (aiohttp alone would wait for the whole body first, however long the client takes to send it);
- a body that arrived with its headers (the common case: one small request) is returned as it is;
- otherwise it is read as it comes, and each wait for the next bytes lasts at most `http_read_timeout_s`:
  a client that stops sending gets 408 and the connection is closed, so a connection cannot be held open
  for ever by a body that never comes (nginx's client_body_timeout);
- a client that leaves mid-body ends the request as CANCELLED (499 in the metrics), not as a server error.
`waiting(request, what)` puts the same per-wait limit on the multipart reader's reads (server/http/images.py).
`expect_continue` answers `Expect: 100-continue` (curl sends it for bodies over 1 MiB) only when the declared
body fits, so a client about to send too much gets the 413 before it uploads anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import HttpVersion11, web

from server.errors import Cancelled, ResourceExhausted
from server.http.status import HTTP, RequestTimeout, error_response


def _declared_over(request: web.Request, limit: int) -> bool:
    n = request.content_length
    return n is not None and n > limit


def check_length(request: web.Request) -> int:
    """The body limit; a Content-Length over it is refused here, from the header alone."""
    limit = request.app[HTTP].max_body_bytes
    if _declared_over(request, limit):
        raise ResourceExhausted(
            f"Content-Length: {request.content_length} bytes is over the limit of {limit} (max_message_bytes)"
        )
    return limit


async def expect_continue(request: web.Request) -> web.Response | None:
    """The POST routes' Expect handler: aiohttp's own, except that a Content-Length over max_message_bytes gets no
    "100 Continue": the handler then answers 413 from the header (check_length) and the client sends no body."""
    expect = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return None
    if expect.lower() != "100-continue":
        return error_response(417, f"Expect: only 100-continue is supported, got {expect!r}")
    if _declared_over(request, request.app[HTTP].max_body_bytes):
        return None
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's: the answer's own bytes start after this line
    return None


@asynccontextmanager
async def waiting(request: web.Request, what: str) -> AsyncIterator[None]:
    """One wait on the client for more of the body: at most http_read_timeout_s, and a client that leaves
    (the connection lost) ends the request as cancelled."""
    timeout_s = request.app[HTTP].read_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise RequestTimeout(
            f"{what}: no bytes from the client for {timeout_s:g} s (http_read_timeout_s); "
            f"{request.content.total_bytes} of {request.content_length or 'an unknown number of'} bytes received"
        ) from None
    except ConnectionResetError:
        raise Cancelled(f"{what}: the client closed the connection before sending it all") from None


async def read_body(request: web.Request) -> bytes:
    """The whole body, within the size limit and the per-wait read timeout (module docstring)."""
    limit = check_length(request)
    content = request.content
    if content.is_eof():  # everything arrived with the headers: nothing to wait for
        return await request.read()
    chunks: list[bytes] = []
    total = 0
    while True:
        async with waiting(request, "request body"):
            chunk = await content.readany()
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise ResourceExhausted(f"request body: over the limit of {limit} bytes (max_message_bytes)")
        chunks.append(chunk)
