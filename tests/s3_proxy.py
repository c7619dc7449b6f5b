"""An HTTP proxy on 127.0.0.1 in front of a local S3 server that answers as a busy or strict S3
does: ``503 SlowDown`` (and now and then ``500 InternalError``) for some requests, and, for
buckets given a region, ``400`` to requests signed for another region (as AWS does). Everything
else is forwarded unchanged; the proxy counts what it answered, so that a test can assert the
refusals really happened."""

from __future__ import annotations

import http.client
import re
import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.servers import LOOPBACK

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}
"""Headers that describe one connection, not the message: never forwarded as they are."""

_SIGNED_REGION = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/s3/aws4_request")

SLOWDOWN = "slowdown"
INTERNAL_ERROR = "internal_error"
WRONG_REGION = "wrong_region"
FORWARDED = "forwarded"


def _error_xml(code: str, message: str, **extra: str) -> bytes:
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{fields}"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


class ThrottlingS3Proxy:
    """A proxy to ``upstream`` (``http://host:port``) that refuses the first ``refuse`` requests.

    No single request (method and target) is refused more than ``per_request`` times, so that a
    client retrying with backoff always gets through: the proxy tests the client's retries, not
    how many of them one unlucky request needs. Every ``internal_error_every``-th refusal is a
    ``500 InternalError`` instead of ``503 SlowDown`` (0: never). ``bucket_regions`` maps buckets
    to the region a request must be signed for; others get AWS's ``400`` with the bucket's
    region in ``x-amz-bucket-region``. Use as a context manager; ``url`` is the endpoint.
    """

    def __init__(
        self,
        upstream: str,
        *,
        refuse: int = 0,
        per_request: int = 2,
        internal_error_every: int = 0,
        bucket_regions: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or LOOPBACK, parts.port or 80)
        self.refuse = refuse
        self.per_request = per_request
        self.internal_error_every = internal_error_every
        self.bucket_regions = dict(bucket_regions or {})
        self.counts: Counter[str] = Counter()
        self._refused_by_request: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def refused(self) -> int:
        """Requests answered with 503 or 500 so far."""
        return self.counts[SLOWDOWN] + self.counts[INTERNAL_ERROR]

    def __enter__(self) -> ThrottlingS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def verdict(self, method: str, target: str, headers: Mapping[str, str]) -> str:
        """What to do with one request: SLOWDOWN, INTERNAL_ERROR, WRONG_REGION or FORWARDED."""
        bucket = urlsplit(target).path.lstrip("/").split("/", 1)[0]
        signed = _SIGNED_REGION.search(headers.get("Authorization", ""))
        expected = self.bucket_regions.get(bucket)
        with self._lock:
            if expected and signed and signed.group(1) != expected:
                outcome = WRONG_REGION
            elif self.refused < self.refuse and (
                self._refused_by_request[(method, target)] < self.per_request
            ):
                self._refused_by_request[(method, target)] += 1
                every = self.internal_error_every
                outcome = INTERNAL_ERROR if every and (self.refused + 1) % every == 0 else SLOWDOWN
            else:
                outcome = FORWARDED
            self.counts[outcome] += 1
        return outcome


def _handler_for(proxy: ThrottlingS3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the counts say what happened."""

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response_only(status)
            for key, value in headers:
                self.send_header(key, value)
            if not any(k.lower() == "content-length" for k, _ in headers):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _refuse(self, outcome: str) -> None:
            bucket = urlsplit(self.path).path.lstrip("/").split("/", 1)[0]
            headers = [("Content-Type", "application/xml")]
            if outcome == SLOWDOWN:
                status, body = 503, _error_xml("SlowDown", "Please reduce your request rate.")
            elif outcome == INTERNAL_ERROR:
                status = 500
                body = _error_xml("InternalError", "We encountered an internal error.")
            else:
                region = proxy.bucket_regions[bucket]
                status = 400
                body = _error_xml(
                    "AuthorizationHeaderMalformed",
                    f"The authorization header is malformed; expecting '{region}'",
                    Region=region,
                )
                headers.append(("x-amz-bucket-region", region))
            self._answer(status, headers, body)

        def _forward(self, body: bytes) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                if self.command == "HEAD":  # the object's size, though no body follows
                    length = response.getheader("Content-Length")
                    kept += [("Content-Length", length)] if length is not None else []
                self._answer(response.status, kept, data)
            finally:
                conn.close()

        def _handle(self) -> None:
            body = self._body()
            outcome = proxy.verdict(self.command, self.path, self.headers)
            if outcome == FORWARDED:
                self._forward(body)
            else:
                self._refuse(outcome)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler
