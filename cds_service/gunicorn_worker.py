"""gunicorn's gthread worker, except that requests gunicorn refuses itself get the service's JSON errors.

A request line or headers gunicorn cannot accept (too long, too many, malformed) never reach the Flask
app: gunicorn answers them from ``Worker.handle_error`` with an HTML page, and quotes the offending bytes
in that page and in its log line. EHR integrators parse this service's errors as FHIR OperationOutcomes,
and those bytes can be an access token or a patient id. This worker answers with the status gunicorn
would have chosen, in the app's error shape, with a reason that names the problem but quotes nothing
the client sent; its log line does the same.

It also keeps slow or stalling clients from holding its threads (JsonErrorWorker.handle, handle_request,
murder_pending, finish_request): a head is parsed only once complete, a body is read under a deadline and
never drained while it has not arrived, an answer's write times out, a close lingers on the poller. And it
sends ``100 Continue`` only once the app reads the body, so a refused request's body is never asked for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from http import HTTPStatus
from ssl import SSLError
from typing import Any

from gunicorn import util
from gunicorn.http import errors
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import _DEFER, ThreadWorker

from cds_service.app import (
    BODY_DEADLINE_S,
    CORS_HEADERS,
    FREE_CHUNKS,
    MIN_AVERAGE_CHUNK_BYTES,
    BodyTooSlow,
    TooManyChunks,
    logged_path,
    operation_outcome,
)

INTERNAL_ERROR = "The service failed to process this request; it has been logged."
# The longest a request's header section may take to arrive, from its first bytes (nginx's
# client_header_timeout, shorter); until it is complete it waits on the worker's poller, not in a thread.
HEAD_DEADLINE_S = 10.0
HEAD_TIMEOUT_REASON = f"The request's header section did not arrive within {HEAD_DEADLINE_S:g} s."
# gthread drops a connection whose poller saw nothing for the keep-alive timeout (see murder_pending).
HEAD_STALLED_REASON = "The request's header section stopped arriving: nothing came for {:g} s."
_HEAD_SINCE = "_cds_head_since"
# Set on a connection whose last request was answered with its body not all arrived (see _close).
_BODY_UNREAD = "_cds_body_unread"
# The longest one of gunicorn's writes of an answer may take (Python's sendall timeout counts the whole
# write): past it the client has stopped reading, or reads at under a few KB/s.
SEND_TIMEOUT_S = 10.0
# How long a closed connection waits for the client's end (gunicorn's close_graceful), and how many may.
LINGER_S = 2.0
MAX_LINGERING = 1000
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")  # a bare-LF head is gunicorn's to refuse, at once
_READ_AHEAD = 65536  # what one look at a waiting connection takes in: a usual head and its body's start
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Set on a request once the app's response to it has been written (see JsonErrorWorker.handle_request).
_ANSWERED = "_cds_answered"
# gunicorn 27 blames a malformed chunked body on the client (400); 23 to 26 dropped the connection and
# logged the body's bytes, one reason the project requires 27.
_CHUNK_ERRORS = (errors.InvalidChunkSize, errors.ChunkMissingTerminator, errors.InvalidChunkExtension)
# Raised while writing the app's own response: its fault, not the client's, so gunicorn answers 500. They
# subclass InvalidHeader and InvalidHeaderName, so they are looked for first.
_APP_FAULTS = (errors.InvalidResponseHeader, errors.InvalidResponseHeaderName)
# Only gunicorn's own names for the framing headers are quoted: any other name came from the client.
_FRAMING_HEADERS = {"CONTENT-LENGTH": "Content-Length", "TRANSFER-ENCODING": "Transfer-Encoding"}
# gunicorn's status for each error it blames on the client, as in its Worker.handle_error.
_REFUSALS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str], ...] = (
    (errors.InvalidRequestLine, 400, "The request line is not a valid HTTP/1.x request line."),
    (errors.InvalidRequestMethod, 400, "The request method is not valid."),
    (errors.InvalidHTTPVersion, 400, "The request's HTTP version is not supported."),
    (errors.UnsupportedTransferCoding, 501, "The request's Transfer-Encoding is not supported."),
    (errors.ConfigurationProblem, 500, "The server is not configured to serve this request path."),
    (errors.ObsoleteFolding, 400, "A request header field uses obsolete line folding."),
    (errors.InvalidHeaderName, 400, "A request header field name is not a valid token."),
    (errors.ExpectationFailed, 417, "The request's Expect header cannot be met."),
    (errors.InvalidProxyLine, 400, "The PROXY protocol line is not valid."),
    (errors.ForbiddenProxyRequest, 403, "PROXY protocol lines are not accepted from this address."),
    (errors.InvalidSchemeHeaders, 400, "The request's forwarded-scheme headers contradict each other."),
    (_CHUNK_ERRORS, 400, "The chunked request body is malformed."),
    (TooManyChunks, 400, str(TooManyChunks())),
    (errors.InvalidH2CPreface, 400, "The HTTP/2 connection preface is not valid."),
    (SSLError, 403, "The TLS connection failed."),
)


def refusal(exc: BaseException, cfg: Any) -> tuple[int, str] | None:
    """The status gunicorn would give a request it refused, and a reason that quotes none of the request.

    None for what gunicorn treats as its own or the application's failure (it answers those 500)."""
    if isinstance(exc, _APP_FAULTS):
        return None
    if isinstance(exc, errors.LimitRequestLine):
        return 414, f"The request line is longer than {cfg.limit_request_line} bytes."
    if isinstance(exc, errors.LimitRequestHeaders):
        return 431, (
            f"The request's header fields exceed the server's limits: at most {cfg.limit_request_fields}"
            f" fields of at most {cfg.limit_request_field_size} bytes each."
        )
    if isinstance(exc, errors.InvalidHeader):
        named = _FRAMING_HEADERS.get(getattr(exc, "hdr", None) or "")
        if named:
            return 400, f"The request's {named} header is not valid."
        return 400, "A request header is not valid."
    for classes, status, reason in _REFUSALS:
        if isinstance(exc, classes):
            return status, reason
    return None


def _body_arrived(reader: Any, unreader: Any) -> bool:
    """Whether the rest of a request's body is in gunicorn's buffer already (or there is none left); for a
    chunked body, only once it has been read to its end.

    gunicorn internals: LengthReader.length, ChunkedReader.parser (None at the end) and the unreader's
    buffer. Should they change, the served tests of bodies left unread and of 100-continue fail."""
    if isinstance(reader, LengthReader):
        if reader.length == 0:
            return True
        with unreader.buf.getbuffer() as buffered:
            return reader.length <= buffered.nbytes
    if isinstance(reader, ChunkedReader):
        return reader.parser is None
    return True


def _asks_to_close(req: Any) -> bool:
    """Whether any Connection field of the request names the "close" option (RFC 9112 9.6).

    gunicorn's Request.should_close looks only at the first Connection field, and only for a value that is
    "close" as a whole: "Connection: TE, close" kept the connection open."""
    return any(
        name == "CONNECTION" and any(option.strip(" \t").lower() == "close" for option in value.split(","))
        for name, value in getattr(req, "headers", ())
    )


def _take_over_continue(req: Any) -> bool:
    """Whether the client waits for "100 Continue" before it sends the body; gunicorn will not send it.

    gunicorn internal: its parser sets ``_expected_100_continue`` and wsgi.create sends the 100 when it
    is true (tests/serving/test_http_expect_continue.py checks both against the installed gunicorn)."""
    if getattr(req, "_expected_100_continue", False) is not True:
        return False
    req._expected_100_continue = False
    return True


class KeptIfReadToEnd:
    """A request body's reader while the app answers, when the body has not all arrived: the connection
    closes after the answer (``Connection: close``) unless the app reads the body to its end.

    Through the request's force_close and must_close (a gunicorn internal), which gunicorn's response
    consults as it writes its head and again once the answer is out; the served tests that expect
    ``Connection: close`` or a kept connection fail should that change."""

    __slots__ = ("_closing", "_reader", "_req", "_unreader")

    def __init__(self, reader: Any, req: Any, unreader: Any) -> None:
        self._reader = reader
        self._req = req
        self._unreader = unreader
        self._closing = req.must_close
        req.force_close()

    def read(self, size: int) -> bytes:
        data: bytes = self._reader.read(size)
        if _body_arrived(self._reader, self._unreader):
            self._req.must_close = self._closing
        return data


def fair_chunks(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """gunicorn's pieces of a chunked body, stopped with TooManyChunks once there are more than FREE_CHUNKS
    of them averaging under MIN_AVERAGE_CHUNK_BYTES.

    Parsing costs gunicorn about 2 µs per chunk whatever its size, so one-byte chunks made a worker spend
    0.3 s of CPU per MB sent (9 s for a 5 MB body, contending for the worker's GIL), for any client with a
    valid token, or any caller with authentication off or behind a 401 (gunicorn drains up to 64 KB of
    body after the answer). HTTP clients write chunks of kilobytes; a body of up to FREE_CHUNKS pieces (a slow
    network's) passes whatever their sizes."""
    size = 0
    for count, piece in enumerate(pieces, start=1):
        size += len(piece)
        if count > FREE_CHUNKS and size < count * MIN_AVERAGE_CHUNK_BYTES:
            raise TooManyChunks()
        yield piece


class BodyDeadline:
    """The connection's socket as gunicorn's body reader sees it while a request is handled: each recv
    waits no later than the deadline (and no longer than the socket's own timeout, the app's idle one),
    then raises BodyTooSlow. ``before_first_recv``, if given, is called once before the first recv (to send
    the 100 Continue of a client that waits for it, see JsonErrorWorker.handle_request)."""

    __slots__ = ("_before_first_recv", "_deadline", "_sock")

    def __init__(
        self, sock: socket.socket, deadline: float, before_first_recv: Callable[[], None] | None = None
    ) -> None:
        self._sock = sock
        self._deadline = deadline
        self._before_first_recv = before_first_recv

    def recv(self, size: int) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTooSlow()
        if self._before_first_recv is not None:
            before, self._before_first_recv = self._before_first_recv, None
            before()
        sock = self._sock
        idle = sock.gettimeout()
        if idle is not None and idle <= remaining:
            return sock.recv(size)
        sock.settimeout(remaining)
        try:
            return sock.recv(size)
        except TimeoutError:
            raise BodyTooSlow() from None
        finally:
            sock.settimeout(idle)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class WithoutRequestBytes(logging.Filter):
    """Keeps only the class name of an exception passed to one of gunicorn's log lines.

    gunicorn's debug lines format exceptions whose text quotes what the client sent: a client that hangs
    up mid-request logs "Ignored premature client disconnection. No more data after: b'…Authorization:
    Bearer …'". The class name still says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, BaseException) for a in record.args):
            record.args = tuple(type(a).__name__ if isinstance(a, BaseException) else a for a in record.args)
        return True


def error_response(status: int, reason: str) -> bytes:
    """A complete HTTP/1.1 response carrying the app's OperationOutcome; the connection closes after it.

    The CORS headers are the app's too, so that a browser-based client can read the reason."""
    outcome = operation_outcome(status, reason)
    body = outcome.get_data()
    headers = {
        "Connection": "close",
        "Content-Type": outcome.content_type,
        "Content-Length": str(len(body)),
        **CORS_HEADERS,
    }
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    return (head + "\r\n").encode("latin-1") + body


class JsonErrorWorker(ThreadWorker):
    """The gthread worker, answering the requests gunicorn refuses the way the app answers its own.

    gunicorn's access-log line for such a request is left out: the service's logger has no access log
    (``serving.ServiceLogger``), and the line would quote the request line."""

    _quitting = False  # set by the first quick-stop signal (handle_quit)

    def handle(self, conn: Any) -> Any:
        """gthread's handle, except that a connection whose next request head has not fully arrived goes
        back to the poller instead of holding a thread.

        gthread gives a new connection a thread that waits up to 5 s for its first byte, and once any byte
        has come it reads the head with a blocking socket and no time limit. Twelve connections sending a
        header line every few seconds (or opening and sending nothing, every 5 s) held all of a pod's
        threads, and /healthz went unanswered for as long as they kept it up. Now a thread parses a head
        only once it is complete (or already past gunicorn's limits, which refuse it at once); a head that
        has not completed HEAD_DEADLINE_S after its first bytes, or that stops arriving for the keep-alive
        timeout (murder_pending), is answered 408 and the connection closed. A normal request costs one
        non-blocking read of what gunicorn would have read anyway."""
        waiting = self._head_pending(conn)
        return super().handle(conn) if waiting is None else waiting

    def _head_pending(self, conn: Any) -> Any:
        """None when a thread may parse the next request now; else _DEFER, or False once it answered 408.

        What has arrived is read (without waiting) into the connection's parser buffer, where gunicorn
        reads first: the socket then wakes the poller again only when more comes."""
        if self.cfg.is_ssl or conn.is_http2 or negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            return None
        if conn.parser is None:
            try:
                if not conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    return None  # closed at once: gunicorn ends it
            except BlockingIOError:
                return _DEFER  # nothing yet: the poller wakes the connection when bytes come
            except OSError:
                return None  # gunicorn meets the error itself
            conn.init()  # blocking socket and an HTTP/1 parser, as gthread's handle would make them
        buffer = conn.parser.unreader.buf
        try:
            arrived = conn.sock.recv(_READ_AHEAD, socket.MSG_DONTWAIT)
        except BlockingIOError:
            arrived = None
        except OSError:
            return None
        if arrived == b"":
            return None  # the client closed its side: gunicorn parses what is buffered, then ends
        if arrived:
            buffer.seek(0, os.SEEK_END)
            buffer.write(arrived)
        data = buffer.getvalue()
        if self._parsable(data):
            setattr(conn, _HEAD_SINCE, None)
            return None
        if not data:
            return _DEFER
        now = time.monotonic()
        since = getattr(conn, _HEAD_SINCE, None)
        if since is None:
            setattr(conn, _HEAD_SINCE, now)
        elif now - since > HEAD_DEADLINE_S:
            self._refuse_head(conn, HEAD_TIMEOUT_REASON)
            return False
        return _DEFER

    def _parsable(self, data: bytes) -> bool:
        """Whether gunicorn can parse or refuse the head in ``data`` without waiting for more bytes."""
        limit = self.cfg.limit_request_line + 2
        line_end = data.find(b"\n")
        return (
            any(end in data for end in _HEAD_ENDS)
            or len(data) >= self._head_limit
            or line_end > limit
            or (line_end < 0 and len(data) > limit)
        )

    @property
    def _head_limit(self) -> int:
        """The most a head may hold under gunicorn's limits: a longer one is refused without waiting."""
        cfg = self.cfg
        return cfg.limit_request_line + 2 + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 2

    def finish_request(self, conn: Any, fs: Any) -> None:
        """gthread's, except that closing a connection gracefully does not wait on the main loop.

        gthread ends a connection it will not keep (after "Connection: close", a refusal, an HTTP/1.0
        answer) with util.close_graceful on the worker's main thread, which lingers up to 2 s reading
        until the client closes too: five clients that kept their sockets open after such an answer
        stalled that worker's accepting and polling, and every other call on it waited, for 10 s."""
        linger_s = BODY_DEADLINE_S if getattr(conn, _BODY_UNREAD, False) else LINGER_S
        conn.close = partial(self._close, conn.sock, linger_s=linger_s)
        super().finish_request(conn, fs)

    def _close(self, sock: socket.socket, graceful: bool = False, linger_s: float = LINGER_S) -> None:
        """Close now, or half-close and let the poller linger for the client's end (RFC 9112 9.6, as
        close_graceful: unread bytes at close would make the kernel reset the connection and could cut
        off the answer) for at most ``linger_s``, without blocking.

        A connection closed with its request's body unread (handle_request) lingers as long as that body
        may take to arrive, BODY_DEADLINE_S: a client that sends its whole body before it reads the answer
        (http.client, urllib3) was still sending when a 2 s linger ended, was reset, and never read it."""
        if not graceful or len(self._lingering) >= MAX_LINGERING:
            util.close(sock)
            return
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._linger_read)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self._lingering[sock] = time.monotonic() + linger_s

    def _linger_read(self, sock: socket.socket) -> None:
        try:
            ended = not sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            ended = True
        if ended:
            self._stop_lingering(sock)

    def _stop_lingering(self, sock: socket.socket) -> None:
        self._lingering.pop(sock, None)
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.poller.unregister(sock)
        util.close(sock)

    def murder_pending(self) -> None:
        """gthread's, except that a connection dropped with part of a head received is first answered 408.

        gthread drops a connection the poller has watched for the keep-alive timeout without a byte coming:
        for one whose head had begun to arrive, that was a request left without an answer. (gthread
        internals: pending_conns, ordered by each connection's timeout; the served test of a stalled head
        fails should they change.)"""
        now = time.monotonic()
        for conn in self.pending_conns:
            if conn.timeout > now:
                break
            if getattr(conn, _HEAD_SINCE, None) is not None:
                self._refuse_head(conn, HEAD_STALLED_REASON.format(self.cfg.keepalive))
        super().murder_pending()

    def _refuse_head(self, conn: Any, reason: str) -> None:
        """Answer 408 to a connection whose head is incomplete (it is closed next)."""
        self.log.warning("Invalid request from ip=%s: %s", (conn.client or ("",))[0], reason)
        try:
            util.write_nonblock(conn.sock, error_response(408, reason))
        except Exception:  # as gunicorn: the client may be gone
            self.log.debug("Failed to send error message.")

    def set_accept_enabled(self, enabled: bool) -> None:
        """gthread's, except that a worker that is stopping closes its copy of the listening sockets.

        gthread stops accepting when it stops, but closed its listening sockets only once its last call had
        ended. The master closes its own on SIGTERM, so the socket stayed open through the workers alone:
        the kernel kept completing connections no one would accept, and a client waited until the last
        call ended (up to the graceful timeout) to be reset, while a server restarted on the same port was
        refused it. Closed now, a connection is refused at once. (A reload, SIGHUP, leaves the socket to
        the master and the new workers, which share it.)"""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()

    def handle_quit(self, sig: int, frame: Any) -> None:
        """gthread's quick stop (SIGINT, SIGQUIT), taken once: a later one does nothing.

        Ctrl-C in a terminal sends SIGINT to every process of the group, and the master then sends each
        worker SIGQUIT, up to a second later (it reads signals from a queue). The second signal ran gthread's
        handler again inside the first: within the thread pool's shutdown it waited for good on the lock the
        first call held (the master SIGKILLed the worker after the graceful timeout, losing its buffered
        call lines and issued-card records); once the first had raised SystemExit, it raised another in the
        middle of the worker's exit, which cut off the calls the exit waits for and logged a traceback.
        (The handler stays installed rather than SIG_IGN: a signal already pending when the disposition
        changed would be reported by Python as "ignored due to race condition", with a traceback.)"""
        if self._quitting:
            return
        self._quitting = True
        super().handle_quit(sig, frame)

    def murder_keepalived(self, force: bool = False) -> None:
        super().murder_keepalived(force)
        now = time.monotonic()
        for sock in [sock for sock, deadline in self._lingering.items() if force or deadline <= now]:
            self._stop_lingering(sock)

    @functools.cached_property
    def _lingering(self) -> dict[socket.socket, float]:
        return {}

    def handle_request(self, req: Any, conn: Any) -> bool:
        """gthread's, except that the body is read under a deadline and in chunks that are not too small;
        the connection closes after the answer when the request asks so (_asks_to_close) or when its body
        has neither been read to its end nor all arrived; ``Expect: 100-continue`` is answered only once the
        app reads the body; and a write of the answer is given up after SEND_TIMEOUT_S.

        A client that sends requests and never reads the answers fills the socket's buffers; gunicorn's
        write of the next answer then blocked for as long as the client kept the connection, holding the
        thread: a handful of such connections kept a worker from answering anything.

        gunicorn drains a body the app left unread before it reuses the connection, on the request's
        thread and for up to 5 s: a few connections that announced a body and sent none held every thread
        of a worker, for any caller (a 404 or a 401 leaves the body unread). An answer given before such a
        body has arrived now closes the connection instead, saying so (KeptIfReadToEnd); the close lingers
        on the poller, not on a thread, for as long as the body may take (_close).

        gunicorn also sends "100 Continue" as soon as it has parsed the head, before the app has looked at
        the request: a client then sent its body (up to the size limit) only to be refused with a 401, 404,
        405, 413 or 415 the app decides from the head alone. Now the 100 goes out just before the body is
        first read from the socket, so a refusal is the client's only answer (RFC 9110 10.1.1), and it
        closes the connection as above: the client may stop waiting and send its body after all, or not.
        A body that is all here already needs no 100."""
        if _asks_to_close(req):
            req.force_close()
        body = getattr(req, "body", None)
        reader = getattr(body, "reader", None)
        if isinstance(reader, ChunkedReader) and reader.parser is not None:
            reader.parser = fair_chunks(reader.parser)
        unreader = getattr(conn.parser, "unreader", None)
        sock = getattr(unreader, "sock", None)
        watched = isinstance(sock, socket.socket)
        awaited = watched and not _body_arrived(reader, unreader)
        if watched:
            expected = _take_over_continue(req)
            if awaited:
                body.reader = KeptIfReadToEnd(reader, req, unreader)
            send_continue = partial(sock.sendall, _CONTINUE) if awaited and expected else None
            unreader.sock = BodyDeadline(sock, time.monotonic() + BODY_DEADLINE_S, send_continue)
            blocking = sock.gettimeout()
            sock.settimeout(SEND_TIMEOUT_S)  # the app's body reads set their own idle timeout
        try:
            keepalive: bool = super().handle_request(req, conn)
        except TimeoutError:
            # Only a write can time out here (the app answers its own body reads' timeouts): the client has
            # stopped reading. gunicorn would log it as an unexpected socket error, with a stack trace.
            self.log.warning(
                "Client at ip=%s stopped reading its answer (a write took over %g s); connection closed",
                (conn.client or ("",))[0],
                SEND_TIMEOUT_S,
            )
            raise StopIteration() from None  # gthread ends the connection
        finally:
            if watched:
                unreader.sock = sock
                with contextlib.suppress(OSError):
                    sock.settimeout(blocking)
            if awaited:
                body.reader = reader
            setattr(conn, _BODY_UNREAD, awaited and not _body_arrived(reader, unreader))
        setattr(req, _ANSWERED, True)
        return keepalive

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        ip = (addr or ("", -1))[0]
        refused = refusal(exc, self.cfg)
        if getattr(req, _ANSWERED, False):
            # gunicorn drains a body the app left unread before reusing the connection; a malformed one
            # failed there, after the app's response had gone out. (Only a body that has all arrived is
            # drained now, see handle_request, but the drain stays gunicorn's.) gunicorn would write a
            # second, unsolicited response, which a client may read as the answer to its next request.
            # Closing the connection (gthread does once this returns) is all that is left to do.
            if refused:
                self.log.warning("Invalid request from ip=%s after its response: %s", ip, refused[1])
            else:
                self.log.exception("Error after answering request %s %s", req.method, logged_path(req.path))
            return
        if refused is None:
            status, reason = 500, INTERNAL_ERROR
            if hasattr(req, "method") and hasattr(req, "path"):
                self.log.exception("Error handling request %s %s", req.method, logged_path(req.path))
            else:
                self.log.exception("Error handling request (no URI read)")
        else:
            status, reason = refused
            self.log.warning("Invalid request from ip=%s: %s (%s)", ip, reason, type(exc).__name__)
        try:
            util.write_nonblock(client, error_response(status, reason))
        except Exception:  # as gunicorn: the client may be gone, and there is nothing more to do
            self.log.debug("Failed to send error message.")
