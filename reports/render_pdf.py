"""The PDF report: the HTML report printed by headless Chromium (Debian package `chromium`).

Chromium lays out the inline SVG and CSS exactly as the HTML shows, so the two never drift apart,
and it is one Debian package instead of a Python stack with its own layout engine. It runs with a
throw-away profile, no network services and hard timeouts.

One Chromium prints every file of a run: starting it costs about a second, printing a page a
tenth of that. `PdfPrinter` drives it through the Chrome DevTools Protocol (CDP) over
`--remote-debugging-pipe`: fd 3 carries commands to Chromium, fd 4 its replies and events, each
message one JSON object followed by a NUL byte
(https://chromedevtools.github.io/devtools-protocol/, "remote-debugging-pipe" in
chrome/browser/devtools/devtools_pipe_handler.cc). The protocol side is sans-I/O, as h11 is:
`MessageReader` frames bytes, `CdpChannel` numbers commands and matches replies, `PrintSchedule`
decides what each tab does next. Only `PdfPrinter` touches the process, the pipes and the clock.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

TIMEOUT_S = 120.0  # one page, from taking it to its PDF written (or Chromium's start)
RUN_TIMEOUT_S = 900.0  # all pages of one print_all call
TABS = 2  # pages in flight; measured in PdfPrinter's docstring
CLOSE_WAIT_S = 5.0  # for Chromium to exit after SIGTERM, or to be reaped after it closed its pipe
QUIT_WAIT_S = 2.0  # for Chromium to quit after Browser.close: it takes a tenth of that
MAX_MESSAGE_BYTES = 256 << 20  # a reply carries a whole PDF in base64; anything bigger is a fault
READ_BYTES = 1 << 20
STDERR_TAIL_BYTES = 1500
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
COMMANDS_FD, REPLIES_FD = 3, 4  # fixed by Chromium for --remote-debugging-pipe

# The HTML report has `@page { size: A4; margin: 14mm; }`: preferCSSPageSize keeps that page (what
# `--print-to-pdf` printed before); the paper size here is only the fallback, A4 in inches.
PRINT_OPTIONS: dict[str, Any] = {
    "printBackground": True,
    "displayHeaderFooter": False,
    "preferCSSPageSize": True,
    "paperWidth": 8.27,
    "paperHeight": 11.69,
}


class PdfError(RuntimeError):
    """Chromium is missing or could not print the report."""


class CdpError(PdfError):
    """Chromium answered a command with a CDP `error` object."""


def find_chromium() -> str | None:
    env = os.environ.get("GPUFLEET_CHROMIUM")
    if env:
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_argv(chromium: str, profile: Path) -> list[str]:
    """Flags for a headless run that needs nothing from outside (no sandbox: runs as root in CI)."""
    return [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={profile}",
    ]


# --- the wire: NUL-terminated JSON -----------------------------------------------------------


def encode_message(message: dict[str, Any]) -> bytes:
    """One CDP message as Chromium's pipe reads it. JSON escapes every control character, so a
    NUL byte can only be the terminator."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\0"


class MessageReader:
    """Bytes from the replies pipe in, whole messages out; a message may span many reads."""

    def __init__(self, limit_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._partial = bytearray()
        self._limit = limit_bytes

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._partial += data
        whole: list[bytearray] = []
        if b"\0" in data:  # else a PDF's reply goes on: no need to look at all of it again
            *whole, rest = self._partial.split(b"\0")
            self._partial = bytearray(rest)
        if len(self._partial) > self._limit:
            raise PdfError(f"chromium sent a message over {self._limit} bytes without its end")
        return [_decode_json(bytes(raw)) for raw in whole]


def _decode_json(raw: bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        raise PdfError(f"chromium sent a message that is not JSON: {raw[:200]!r}") from None
    if not isinstance(message, dict):
        raise PdfError(f"chromium sent a message that is not a JSON object: {raw[:200]!r}")
    return message


# --- commands and replies --------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None  # None: the browser itself; else the tab attached as this session


@dataclass(frozen=True)
class Reply:
    id: int
    result: dict[str, Any]


@dataclass(frozen=True)
class Event:
    method: str
    params: dict[str, Any]
    session_id: str | None


def decode(message: dict[str, Any]) -> Reply | Event:
    """A received message as a reply to a command (by its `id`) or an event (by its `method`);
    a CDP `error` object becomes CdpError, naming Chromium's code and message."""
    if "id" in message:
        error = message.get("error")
        if error is not None:
            raise CdpError(f"chromium refused command {message['id']}: {_error_text(error)}")
        return Reply(message["id"], message.get("result", {}))
    if "method" in message:
        return Event(message["method"], message.get("params", {}), message.get("sessionId"))
    raise PdfError(f"chromium sent a message with neither id nor method: {str(message)[:200]}")


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    text = f"{error.get('message', 'no message')} (code {error.get('code', '?')})"
    return f"{text}: {error['data']}" if error.get("data") else text


class CdpChannel:
    """Numbers outgoing commands and pairs each reply with the command and owner that sent it."""

    def __init__(self) -> None:
        self._next_id = 1
        self._pending: dict[int, tuple[Command, int]] = {}  # id -> (command, owner)

    def send(self, command: Command, owner: int) -> bytes:
        message: dict[str, Any] = {"id": self._next_id, "method": command.method, "params": command.params}
        if command.session_id is not None:
            message["sessionId"] = command.session_id
        self._pending[self._next_id] = (command, owner)
        self._next_id += 1
        return encode_message(message)

    def reply_to(self, message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(owner, result) of a reply. Errors name the command's method, which the reply lacks."""
        pending = self._pending.pop(message.get("id", -1), None)
        if pending is None:
            raise PdfError(f"chromium replied to a command never sent: {str(message)[:200]}")
        command, owner = pending
        try:
            reply = decode(message)
        except CdpError as exc:
            raise CdpError(f"{command.method}: {exc}") from None
        assert isinstance(reply, Reply)
        return owner, reply.result

    @property
    def waiting(self) -> int:
        return len(self._pending)


# --- what each tab does ----------------------------------------------------------------------


@dataclass(frozen=True)
class WaitForEvent:
    """Until an event of `method` in `session_id` whose params include all of `match`."""

    session_id: str
    method: str
    match: dict[str, Any]

    def matches(self, event: Event) -> bool:
        return (event.session_id == self.session_id and event.method == self.method
                and all(event.params.get(k) == v for k, v in self.match.items()))


Step = Command | WaitForEvent
Steps = Generator[Step, Any, Any]  # sends a Command's result or the awaited Event back in


@dataclass(frozen=True)
class TabIds:
    target: str
    session: str  # on every message to and from the tab (flat sessions)
    frame: str  # its main frame, whose document each page replaces


def open_tab() -> Steps:
    """A blank tab attached as a flat session, with its Page events on. Returns its TabIds."""
    target = (yield Command("Target.createTarget", {"url": "about:blank"}))["targetId"]
    session = (yield Command("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
    yield Command("Page.enable", {}, session)
    tree = yield Command("Page.getFrameTree", {}, session)
    return TabIds(target, session, tree["frameTree"]["frame"]["id"])


def close_tab(target: str) -> Steps:
    """Close a tab no page is left for, so that a printer's later print_all calls start clean."""
    yield Command("Target.closeTarget", {"targetId": target})


def print_page(tab: TabIds, html: str, options: dict[str, Any]) -> Steps:
    """Put `html` in the tab as its document, wait for its load event, print it; returns the
    PDF's bytes.

    Page.setDocumentContent, not Page.navigate to a file: a navigation makes a new document and
    frame host each time, and cost Chromium a third more CPU per page (55 ms of 150). The report
    is self-contained (inline SVG and CSS, no script, no fetch), so the document is whole once
    parsed; the load event is still awaited, so that a report that ever loads something is
    printed after it. The tab's earlier events are dropped when the page starts
    (PrintSchedule._finish), so the load awaited is this document's: it may come before or after
    the command's reply."""
    yield Command("Page.setDocumentContent", {"frameId": tab.frame, "html": html}, tab.session)
    yield WaitForEvent(tab.session, "Page.loadEventFired", {})
    printed = yield Command("Page.printToPDF", options, tab.session)
    return base64.b64decode(printed["data"], validate=True)


EVENTS_KEPT = 64  # per tab: Page events arrive a few per page; older ones matter no more


@dataclass
class _Tab:
    steps: Steps
    page: int | None = None  # index of the page it prints; None while it opens or closes
    ids: TabIds | None = None  # once open
    closing: bool = False
    waiting: WaitForEvent | None = None
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))


class PrintSchedule:
    """Sans-I/O: print `documents` (HTML) in `tabs` tabs at once. `start()` and `receive(message)` return the
    bytes to send to Chromium; printed pages collect in `printed` as (index, PDF bytes) until
    taken. `done` once every page is printed."""

    def __init__(self, documents: Iterable[str], tabs: int = TABS, options: dict[str, Any] | None = None) -> None:
        if tabs < 1:
            raise ValueError(f"tabs must be at least 1, not {tabs}")
        self._documents = enumerate(documents)
        self._tabs = [_Tab(open_tab()) for _ in range(tabs)]
        self._by_session: dict[str, int] = {}
        self._options = PRINT_OPTIONS if options is None else options
        self._channel = CdpChannel()
        self.printed: list[tuple[int, bytes]] = []

    @property
    def done(self) -> bool:
        return all(tab.steps is None for tab in self._tabs)

    def pages_in_flight(self) -> list[int]:
        return [tab.page for tab in self._tabs if tab.page is not None]

    def start(self) -> bytes:
        return b"".join(self._advance(owner, None) for owner in range(len(self._tabs)))

    def receive(self, message: dict[str, Any]) -> bytes:
        if "id" in message:
            owner, result = self._channel.reply_to(message)
            return self._advance(owner, result)
        event = decode(message)
        assert isinstance(event, Event)
        owner = self._by_session.get(event.session_id or "")
        if owner is None:
            return b""  # browser-wide events (targets created, attached): nothing waits on them
        tab = self._tabs[owner]
        if tab.waiting is not None and tab.waiting.matches(event):
            return self._advance(owner, event)
        tab.events.append(event)
        return b""

    def take_printed(self) -> list[tuple[int, bytes]]:
        taken, self.printed = self.printed, []
        return taken

    def _advance(self, owner: int, value: Any) -> bytes:
        """Run the tab's steps until it sends a command or waits for an event not yet here."""
        tab = self._tabs[owner]
        tab.waiting = None
        while tab.steps is not None:
            try:
                step = tab.steps.send(value)
            except StopIteration as finished:
                self._finish(owner, finished.value)
                value = None  # a fresh generator's first send
                continue
            if isinstance(step, Command):
                return self._channel.send(step, owner)
            value = self._already_here(tab, step)
            if value is None:
                tab.waiting = step
                return b""
        return b""

    def _already_here(self, tab: _Tab, wait: WaitForEvent) -> Event | None:
        for event in tab.events:
            if wait.matches(event):
                tab.events.remove(event)
                return event
        return None

    def _finish(self, owner: int, value: Any) -> None:
        """A tab finished opening, printing or closing: next, its next page, or closing when no
        page is left, or nothing (its steps end) once closed."""
        tab = self._tabs[owner]
        if tab.closing:
            tab.steps = None
            return
        if tab.ids is None:
            tab.ids = value
            self._by_session[value.session] = owner
        elif tab.page is not None:
            self.printed.append((tab.page, value))
        tab.events.clear()  # from here on, the tab's events are the next page's
        following = next(self._documents, None)
        if following is None:
            tab.page, tab.closing, tab.steps = None, True, close_tab(tab.ids.target)
            return
        tab.page, html = following
        tab.steps = print_page(tab.ids, html, self._options)


class Deadlines:
    """The time limits of one print_all call on a monotonic clock (times are passed in):
    `run_timeout_s` for all of it, `page_timeout_s` for each page from when it is first seen in
    flight, and `page_timeout_s` for each stretch with no page in flight (Chromium starting,
    tabs opening or closing)."""

    def __init__(self, now: float, page_timeout_s: float, run_timeout_s: float) -> None:
        self.page_timeout_s = page_timeout_s
        self.run_timeout_s = run_timeout_s
        self._run_ends = now + run_timeout_s
        self._page_ends: dict[int, float] = {}  # page in flight -> its deadline
        self._idle_ends = now + page_timeout_s

    def seconds_left(self, now: float, in_flight: Iterable[int]) -> float:
        """Until the nearest deadline; PdfError, saying which, once one has passed."""
        pages = set(in_flight)
        if not pages and self._page_ends:
            self._idle_ends = now + self.page_timeout_s  # the last pages just finished
        self._page_ends = {page: self._page_ends.get(page, now + self.page_timeout_s) for page in pages}
        if now >= self._run_ends:
            raise PdfError(f"chromium did not print all pages within {self.run_timeout_s:g} s (the limit per run)")
        late = sorted(page for page, ends in self._page_ends.items() if now >= ends)
        if late:
            raise PdfError(f"chromium did not print page {late[0] + 1} within {self.page_timeout_s:g} s (the limit per page)")
        if not pages and now >= self._idle_ends:
            raise PdfError(f"chromium did not answer within {self.page_timeout_s:g} s (starting, or opening a tab)")
        return min([self._run_ends, *self._page_ends.values(), *([] if pages else [self._idle_ends])]) - now


# --- the process -----------------------------------------------------------------------------


class PdfPrinter:
    """One headless Chromium for many PDFs:

        with PdfPrinter() as printer:
            printer.print_all([(html, Path("a.pdf")), (html2, Path("b.pdf"))])

    Chromium gets a throw-away profile in a temporary folder and its own process group, so that
    leaving the block always ends and reaps it and its helpers, whatever happened. Every wait is
    bounded: `page_timeout_s` per page, `run_timeout_s` per print_all call.

    `tabs` pages are in flight at once, so that Chromium lays out one while it composes the PDF
    of another and Python writes a third. Measured on the 2-core box (100 copies of a month's
    4-page report; load average 2.7 from other work): 1 tab 9.4 s, 2 tabs 6.8 s, 3 tabs 6.5 s,
    Chromium's CPU 9.3 s in each case. Two take nearly all the gain with one renderer fewer."""

    def __init__(self, chromium: str | None = None, *, tabs: int = TABS, page_timeout_s: float = TIMEOUT_S,
                 run_timeout_s: float = RUN_TIMEOUT_S) -> None:
        self.chromium = chromium or find_chromium()
        if self.chromium is None:
            raise PdfError("chromium is not installed (Debian: apt-get install chromium); needed for --format pdf")
        self.tabs = tabs
        self.page_timeout_s = page_timeout_s
        self.run_timeout_s = run_timeout_s
        self.pages_printed = 0
        self.pid: int | None = None  # Chromium's browser process, while it runs
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._commands_fd = -1
        self._replies_fd = -1
        self._reader = MessageReader()

    def __enter__(self) -> Self:
        self._tmp = tempfile.TemporaryDirectory(prefix="gpufleet-pdf-")
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def _folder(self) -> Path:
        assert self._tmp is not None, "use PdfPrinter in a with block"
        return Path(self._tmp.name)

    def _start(self) -> None:
        commands_read, commands_write = _pipe_clear_of_3_and_4()
        replies_read, replies_write = _pipe_clear_of_3_and_4()
        stderr = (self._folder / "chromium.stderr").open("wb")
        argv = [*chromium_argv(self.chromium, self._folder / "profile"), "--remote-debugging-pipe"]  # type: ignore[arg-type]
        try:
            # Its own session and process group: close() can end Chromium's helpers with it.
            self._process = subprocess.Popen(
                _on_fds_3_and_4(argv, commands_read, replies_write), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=(commands_read, replies_write),
                start_new_session=True,
            )
        except OSError as exc:
            raise PdfError(f"cannot start chromium ({self.chromium}): {exc}") from None
        finally:
            stderr.close()
            os.close(commands_read)
            os.close(replies_write)
        self._commands_fd, self._replies_fd = commands_write, replies_read
        os.set_blocking(commands_write, False)  # see _send
        self.pid = self._process.pid

    def print_all(self, pages: Iterable[tuple[str, Path]]) -> list[Path]:
        """Print each (HTML, PDF path) pair; the paths written, in order. Pages are taken from
        `pages` only as a tab becomes free, so a generator renders while Chromium prints."""
        written: dict[int, Path] = {}
        outs: list[Path] = []
        schedule = PrintSchedule(_documents(pages, outs), self.tabs)
        clock = Deadlines(time.monotonic(), self.page_timeout_s, self.run_timeout_s)
        self._send(schedule.start())
        while not schedule.done:
            left_s = clock.seconds_left(time.monotonic(), schedule.pages_in_flight())
            for message in self._read(timeout_s=left_s):
                self._send(schedule.receive(message))
            for index, pdf in schedule.take_printed():
                written[index] = _write_pdf(outs[index], pdf)
                self.pages_printed += 1
        return [written[index] for index in sorted(written)]

    def _send(self, data: bytes) -> None:
        """Write all of `data`. A page's HTML is one message, far over a pipe's 64 KiB, so a
        Chromium that stops reading would block a plain write for ever: the fd is non-blocking
        and each wait for room is bounded by page_timeout_s."""
        view = memoryview(data)
        deadline = time.monotonic() + self.page_timeout_s
        while view:
            _, writable, _ = select.select([], [self._commands_fd], [], max(0.0, deadline - time.monotonic()))
            if not writable:
                raise PdfError(f"chromium took no commands for {self.page_timeout_s:g} s")
            try:
                view = view[os.write(self._commands_fd, view) :]
            except BlockingIOError:
                continue  # room for less than one atomic write (PIPE_BUF): wait again
            except BrokenPipeError:
                raise self._died() from None

    def _read(self, timeout_s: float) -> list[dict[str, Any]]:
        """The messages that arrive within `timeout_s` (none if none did); PdfError when
        Chromium closed its end, i.e. exited."""
        ready, _, _ = select.select([self._replies_fd], [], [], timeout_s)
        if not ready:
            return []
        data = os.read(self._replies_fd, READ_BYTES)
        if not data:
            raise self._died()
        return self._reader.feed(data)

    def _died(self) -> PdfError:
        assert self._process is not None
        try:
            code: int | str = self._process.wait(timeout=CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            code = "none yet: it closed the pipe but runs on"
        return PdfError(f"chromium exited while printing (exit {code}): {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        try:
            data = (self._folder / "chromium.stderr").read_bytes()
        except OSError:
            return "(no stderr)"
        text = data[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()
        return " | ".join(line for line in text.splitlines() if line.strip()) or "(stderr empty)"

    def close(self) -> None:
        """Ask Chromium to quit, then SIGTERM and SIGKILL its process group if it lingers; reap
        it; remove the profile. Safe to call twice."""
        if self._process is not None:
            self._stop(self._process)
            self._process = None
            self.pid = None
        for fd in (self._commands_fd, self._replies_fd):
            if fd >= 0:
                os.close(fd)
        self._commands_fd = self._replies_fd = -1
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            # Browser.close lets Chromium end its helpers and reap them (their CPU time then
            # shows in ours as children's); killing the group is the fallback. The fd is
            # non-blocking: a Chromium that reads no more cannot hold this write up.
            with contextlib.suppress(OSError):
                os.write(self._commands_fd, encode_message({"id": 0, "method": "Browser.close", "params": {}}))
            for sig, wait_s in ((None, QUIT_WAIT_S), (signal.SIGTERM, CLOSE_WAIT_S), (signal.SIGKILL, CLOSE_WAIT_S)):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Helpers that outlived the browser (a crash) are still in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _pipe_clear_of_3_and_4() -> tuple[int, int]:
    """A pipe whose two fds are 10 or more, so that moving the child's ends onto 3 and 4 can
    never overwrite one of them (_on_fds_3_and_4)."""
    low = os.pipe()
    try:
        return fcntl.fcntl(low[0], fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(low[1], fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(low[0])
        os.close(low[1])


# Run in a bare Python (-I -S: no site, no environment; about 10 ms) between fork and Chromium.
_MOVE_FDS_AND_EXEC = (
    "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); "
    f"os.dup2(r, {COMMANDS_FD}); os.dup2(w, {REPLIES_FD}); os.close(r); os.close(w); "
    "os.execvp(sys.argv[3], sys.argv[3:])"
)


def _on_fds_3_and_4(argv: list[str], commands_read: int, replies_write: int) -> list[str]:
    """`argv` started with the two pipe ends moved to fds 3 and 4, where Chromium looks for
    them; the trampoline execs Chromium, which keeps the pid. pass_fds alone keeps an fd's
    number; preexec_fn (dup2 in the forked child) can deadlock when this process has threads;
    /bin/sh (dash) takes no fd numbers over 9 in redirections."""
    return [sys.executable, "-I", "-S", "-c", _MOVE_FDS_AND_EXEC, str(commands_read), str(replies_write), *argv]


def _documents(pages: Iterable[tuple[str, Path]], outs: list[Path]) -> Iterator[str]:
    """The HTML of each page, noting where its PDF goes as it is taken."""
    for html, out in pages:
        outs.append(out)
        yield html


def _write_pdf(out: Path, pdf: bytes) -> Path:
    if not pdf.startswith(b"%PDF-"):
        raise PdfError(f"chromium printed something that is not a PDF for {out.name}: {pdf[:20]!r}")
    out.write_bytes(pdf)
    return out


def html_to_pdf(html: str, out: Path) -> Path:
    """One page printed by a Chromium of its own; for many pages use one PdfPrinter."""
    with PdfPrinter(tabs=1) as printer:
        return printer.print_all([(html, out.resolve())])[0]
