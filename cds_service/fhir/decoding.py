"""A FHIR server's compressed answer, decompressed a bounded piece at a time.

The client decompresses bodies itself instead of leaving it to urllib3, so that every piece of output is
small and followed by the budget and size checks of ``FhirClient._read_body``, whatever urllib3 version is
installed: before 2.6, urllib3 inflated each raw read in one go (a 64 KiB read of a gzip bomb is 64 MiB,
and "gzip, gzip" multiplies that again), and even after, which codings it decodes depends on the optional
modules installed (brotli, zstandard). Only what the client asks for is accepted: ``gzip`` (or
``x-gzip``), ``deflate`` and ``identity``, one coding at most.

The other cost of a bomb is reading the JSON it inflates to: the parser holds the GIL for all of it,
so the thread waiting for the budget to end cannot wake up either. ``parse_cost_s`` estimates that cost
from the body as it arrives, so a body too costly to read in the time left is given up before it is read.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

# What the client sends as Accept-Encoding; the decoder below reads exactly these.
ACCEPT_ENCODING = "gzip, deflate"
# The most a single decompression step may produce before the caller looks at the clock and the size.
PIECE_BYTES = 64 * 1024

# What parsing is taken to spend per structural token (an object or array opened, a value separated, a
# key given). Measured worst shapes on a 2026 x86 server, with the garbage collector running as it does
# during a hook call: for orjson, arrays nested in arrays ~300 ns, Bundle entries 290 to 520 ns (the more
# of them, the more each costs the collector), objects of many keys ~140 ns; for the standard library's
# parser (bodies over 1 MiB, see ``client._loads``) ~400 ns and ~280 ns. Numbers, strings and whitespace
# cost far less and are not counted. Twice the worst, for slower machines: real FHIR pages (a few MB at
# most) need a fraction of any budget, so only a body built to be expensive is refused.
_PARSE_S_PER_TOKEN = 1e-6
_TOKENS = (b"{", b"[", b",", b":")


class UnsupportedCoding(Exception):
    """The body is in a Content-Encoding the client did not ask for, or in more than one."""


class CorruptBody(Exception):
    """The body is not valid in the Content-Encoding it claims."""


def structural_tokens(data: bytes) -> int:
    """How many ``{ [ , :`` a piece of JSON holds (those inside strings too: an estimate from above)."""
    return sum(data.count(token) for token in _TOKENS)


def parse_cost_s(tokens: int) -> float:
    """A generous estimate of the seconds parsing a body of ``tokens`` tokens takes."""
    return tokens * _PARSE_S_PER_TOKEN


def _codings(header: str | None) -> list[str]:
    if header is None:
        return []
    return [coding for coding in (part.strip().lower() for part in header.split(",")) if coding != "identity"]


class BodyDecoder:
    """Turns the raw bytes of a body, fed as they arrive, into decoded pieces of at most ``PIECE_BYTES``."""

    def __init__(self, content_encoding: str | None) -> None:
        codings = _codings(content_encoding)
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            shown = (content_encoding or "").strip()[:40]
            raise UnsupportedCoding(f"Content-Encoding {shown!r} was not asked for")
        self._coding = {"x-gzip": "gzip"}.get(codings[0], codings[0]) if codings else None
        self._inflater: zlib._Decompress | None = None
        self._pending = b""  # deflate: the first bytes, until the zlib wrapper can be told from raw deflate
        self._fed = False
        self._ended = False  # past the end of the compressed data: the rest is ignored
        if self._coding == "gzip":
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded pieces of ``data`` (raw bytes from the wire), each at most ``PIECE_BYTES`` long."""
        self._fed = self._fed or bool(data)
        if self._coding is None:
            for start in range(0, len(data), PIECE_BYTES):
                yield data[start : start + PIECE_BYTES]
            return
        if self._inflater is None:  # deflate, and its first two bytes not seen yet
            self._pending += data
            if len(self._pending) < 2:
                return
            data, self._pending = self._pending, b""
            # RFC 9110 says zlib-wrapped; some servers send raw deflate. A zlib header is CM 8 and a
            # multiple of 31 (RFC 1950), which raw deflate data only rarely looks like.
            wrapped = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        yield from self._inflate(data)

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        while not self._ended:
            inflater = self._inflater
            assert inflater is not None
            if inflater.eof:
                # A gzip body may be several members one after another (RFC 1952); anything else after
                # the end (padding, a second deflate stream) is ignored, as urllib3 ignores it.
                if not data:
                    return
                if self._coding != "gzip" or not b"\x1f\x8b".startswith(data[:2]):
                    self._ended = True
                    return
                inflater = self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                # At most PIECE_BYTES out; the input it had no room for stays in unconsumed_tail.
                piece = inflater.decompress(data, PIECE_BYTES)
            except zlib.error:
                raise CorruptBody(f"body is not valid {self._coding} data") from None
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            if piece:
                yield piece
            # A full piece may leave output inside zlib even when no input is left: ask again.
            if not data and len(piece) < PIECE_BYTES:
                return

    def finish(self) -> None:
        """Check the body ended where its coding says it does: a cut-off stream is not a whole answer."""
        if self._coding is None or not self._fed or self._ended:
            return
        if self._pending or self._inflater is None or not self._inflater.eof:
            raise CorruptBody(f"{self._coding} body ends early")
