"""uvicorn's HTTP/1.1 protocol with one change: a request that is not valid HTTP (a ``Content-Length`` that is not a
number, a broken request line ...) is answered in the API's error shape, ``{"detail", "code": "bad_request"}``,
instead of uvicorn's plain-text ``Invalid HTTP request received.``."""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class JSONErrorH11Protocol(H11Protocol):
    """:class:`uvicorn.protocols.http.h11_impl.H11Protocol` answering malformed requests with a JSON 400."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"detail": f"malformed HTTP request: {msg}", "code": "bad_request"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        output = self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request"))
        output += self.conn.send(h11.Data(data=body))
        output += self.conn.send(h11.EndOfMessage())
        self.transport.write(output)  # one write: no small segments for Nagle to hold back
        self.transport.close()
