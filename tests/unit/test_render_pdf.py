"""The PDF printer's protocol side, without Chromium: NUL-framed JSON, replies matched to their
commands, events routed by sessionId, CDP errors, and whole print runs against a fake browser
that answers as Chromium does (tests/integration/test_reports_render.py prints with the real one)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gpufleet.reports.render_pdf import (
    CdpChannel, CdpError, Command, Deadlines, Event, MessageReader, PdfError, PrintSchedule, Reply, WaitForEvent, decode,
    encode_message,
)


def test_a_message_is_compact_json_and_one_nul():
    message = {"id": 7, "method": "Page.enable", "params": {}, "sessionId": "S1"}
    assert encode_message(message) == b'{"id":7,"method":"Page.enable","params":{},"sessionId":"S1"}\x00'


def test_a_nul_inside_a_string_is_escaped_so_it_cannot_end_the_message():
    encoded = encode_message({"id": 1, "method": "x", "params": {"text": "a\x00b"}})
    assert encoded.count(b"\x00") == 1 and encoded.endswith(b"\x00")
    assert MessageReader().feed(encoded) == [{"id": 1, "method": "x", "params": {"text": "a\x00b"}}]


def test_messages_split_and_joined_across_reads_come_out_whole():
    first, second = encode_message({"id": 1, "result": {}}), encode_message({"method": "E", "params": {"n": 2}})
    stream = first + second
    reader = MessageReader()
    got = [message for i in range(0, len(stream), 5) for message in reader.feed(stream[i : i + 5])]
    assert got == [{"id": 1, "result": {}}, {"method": "E", "params": {"n": 2}}]
    assert MessageReader().feed(stream) == got


def test_a_message_without_its_end_is_kept_until_it_comes():
    reader = MessageReader()
    assert reader.feed(b'{"id":1,') == []
    assert reader.feed(b'"result":{}}\x00{"id"') == [{"id": 1, "result": {}}]


def test_bad_messages_are_pdf_errors_that_show_them():
    with pytest.raises(PdfError, match=r"not JSON: b'\{oops'"):
        MessageReader().feed(b"{oops\x00")
    with pytest.raises(PdfError, match="not a JSON object"):
        MessageReader().feed(b"[1]\x00")
    with pytest.raises(PdfError, match="over 10 bytes"):
        MessageReader(limit_bytes=10).feed(b'{"id": 1, "result"')


def test_decode_tells_replies_from_events_and_keeps_the_session():
    assert decode({"id": 3, "result": {"a": 1}}) == Reply(3, {"a": 1})
    assert decode({"id": 4}) == Reply(4, {})
    assert decode({"method": "Page.lifecycleEvent", "params": {"name": "load"}, "sessionId": "S"}) == Event(
        "Page.lifecycleEvent", {"name": "load"}, "S")
    assert decode({"method": "Target.targetCreated", "params": {}}) == Event("Target.targetCreated", {}, None)
    with pytest.raises(PdfError, match="neither id nor method"):
        decode({"result": {}})


def test_a_cdp_error_object_names_code_message_and_data():
    with pytest.raises(CdpError, match=r"refused command 9: Printing failed \(code -32000\)$"):
        decode({"id": 9, "error": {"code": -32000, "message": "Printing failed"}})
    with pytest.raises(CdpError, match=r"No target with given id found \(code -32602\): t-1$"):
        decode({"id": 9, "error": {"code": -32602, "message": "No target with given id found", "data": "t-1"}})


def test_the_channel_numbers_commands_and_hands_replies_to_their_owner():
    channel = CdpChannel()
    first = channel.send(Command("Target.createTarget", {"url": "about:blank"}), owner=5)
    second = channel.send(Command("Page.enable", {}, "S1"), owner=6)
    assert json.loads(first[:-1]) == {"id": 1, "method": "Target.createTarget", "params": {"url": "about:blank"}}
    assert json.loads(second[:-1]) == {"id": 2, "method": "Page.enable", "params": {}, "sessionId": "S1"}
    assert channel.waiting == 2
    assert channel.reply_to({"id": 2, "result": {}, "sessionId": "S1"}) == (6, {})
    assert channel.reply_to({"id": 1, "result": {"targetId": "T"}}) == (5, {"targetId": "T"})
    assert channel.waiting == 0


def test_the_channel_names_the_method_of_a_refused_command_and_rejects_strangers():
    channel = CdpChannel()
    channel.send(Command("Page.printToPDF", {}, "S1"), owner=0)
    with pytest.raises(CdpError, match=r"^Page.printToPDF: chromium refused command 1: Printing failed \(code -32000\)"):
        channel.reply_to({"id": 1, "error": {"code": -32000, "message": "Printing failed"}})
    with pytest.raises(PdfError, match="never sent"):
        channel.reply_to({"id": 1, "result": {}})


def test_a_wait_matches_its_session_method_and_params_only():
    wait = WaitForEvent("S1", "Page.lifecycleEvent", {"name": "load", "loaderId": "L2"})
    assert wait.matches(Event("Page.lifecycleEvent", {"name": "load", "loaderId": "L2", "timestamp": 1.5}, "S1"))
    assert not wait.matches(Event("Page.lifecycleEvent", {"name": "load", "loaderId": "L1"}, "S1"))
    assert not wait.matches(Event("Page.lifecycleEvent", {"name": "DOMContentLoaded", "loaderId": "L2"}, "S1"))
    assert not wait.matches(Event("Page.lifecycleEvent", {"name": "load", "loaderId": "L2"}, "S2"))
    assert not wait.matches(Event("Page.loadEventFired", {"name": "load", "loaderId": "L2"}, "S1"))


# --- whole runs against a fake browser ----------------------------------------------------------


class FakeChromium:
    """Answers each command as Chromium does, in memory. A page's "PDF" is `%PDF-` and its HTML.
    `load_first`: a document's load event comes before the setDocumentContent reply (Chromium
    may fire it while the command runs, or after). `refuse`: a method answered with a CDP error."""

    def __init__(self, *, load_first: bool = False, refuse: str | None = None) -> None:
        self.load_first = load_first
        self.refuse = refuse
        self.received: list[dict[str, Any]] = []
        self.open_targets: set[str] = set()
        self._documents: dict[str, str] = {}  # session -> HTML in its tab

    def answer(self, data: bytes) -> list[dict[str, Any]]:
        out = []
        for message in MessageReader().feed(data):
            self.received.append(message)
            out += self._answer(message)
        return out

    def _answer(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        method, params, session = message["method"], message["params"], message.get("sessionId")
        reply: dict[str, Any] = {"id": message["id"]} | ({"sessionId": session} if session else {})
        if method == self.refuse:
            return [reply | {"error": {"code": -32000, "message": f"{method} failed"}}]
        if method == "Target.createTarget":
            target = f"T{len(self.open_targets) + 1}"
            self.open_targets.add(target)
            return [{"method": "Target.targetCreated", "params": {"targetInfo": {"targetId": target}}}, reply | {"result": {"targetId": target}}]
        if method == "Target.attachToTarget":
            return [reply | {"result": {"sessionId": "S" + params["targetId"]}}]
        if method == "Target.closeTarget":
            self.open_targets.remove(params["targetId"])
            return [reply | {"result": {"success": True}}]
        if method == "Page.getFrameTree":
            return [reply | {"result": {"frameTree": {"frame": {"id": "F" + session, "url": "about:blank"}}}}]
        if method == "Page.setDocumentContent":
            assert params["frameId"] == "F" + session
            self._documents[session] = params["html"]
            load = {"method": "Page.loadEventFired", "params": {"timestamp": 1.0}, "sessionId": session}
            return [load, reply | {"result": {}}] if self.load_first else [reply | {"result": {}}, load]
        if method == "Page.printToPDF":
            assert params["printBackground"] is True and params["preferCSSPageSize"] is True
            pdf = b"%PDF-" + self._documents[session].encode()
            return [reply | {"result": {"data": base64.b64encode(pdf).decode()}}]
        return [reply | {"result": {}}]


def run(schedule: PrintSchedule, browser: FakeChromium, outbox: bytes | None = None, steps: int = 1000) -> None:
    """Carry bytes between the schedule and the browser until the schedule is done; from the
    start, or on from `outbox`, what the schedule last sent."""
    pending = [schedule.start() if outbox is None else outbox]
    for _ in range(steps):
        if schedule.done:
            return
        replies = browser.answer(b"".join(pending))
        assert replies, "the schedule waits on nothing"
        pending = [schedule.receive(message) for message in replies]
    raise AssertionError("not done")


@pytest.mark.parametrize("load_first", [False, True])
def test_every_page_is_printed_once_in_its_own_slot(load_first):
    pages = [f"<p>page {i}</p>" for i in range(5)]
    schedule, browser = PrintSchedule(pages, tabs=2), FakeChromium(load_first=load_first)
    run(schedule, browser)
    printed = dict(schedule.take_printed())
    assert printed == {i: b"%PDF-" + html.encode() for i, html in enumerate(pages)}
    assert schedule.take_printed() == []
    methods = [m["method"] for m in browser.received]
    assert methods.count("Target.createTarget") == 2 and methods.count("Page.printToPDF") == 5
    assert browser.open_targets == set()  # both tabs closed once no page was left


def test_printing_waits_for_the_load_of_its_document():
    schedule, browser = PrintSchedule(["<p>a</p>"], tabs=1), FakeChromium()
    outbox = schedule.start()
    while b"Page.setDocumentContent" not in outbox:
        outbox = b"".join(schedule.receive(m) for m in browser.answer(outbox))
    answered, load = browser.answer(outbox)
    assert schedule.receive(answered) == b""  # parsed, not yet loaded: no print yet
    assert schedule.receive({"method": "Page.loadEventFired", "params": {}, "sessionId": "Sother"}) == b""  # another tab's
    assert b'"method":"Page.printToPDF"' in schedule.receive(load)


def test_pages_are_taken_one_at_a_time_as_tabs_come_free():
    taken = []

    def urls():
        for i in range(4):
            taken.append(i)
            yield f"<p>{i}</p>"

    schedule, browser = PrintSchedule(urls(), tabs=2), FakeChromium()
    outbox = schedule.start()
    assert taken == []  # opening tabs takes no page yet
    while not taken:
        outbox = b"".join(schedule.receive(m) for m in browser.answer(outbox))
    assert len(taken) <= 2 and sorted(schedule.pages_in_flight()) == taken
    run(schedule, browser, outbox)
    assert taken == [0, 1, 2, 3] and schedule.pages_in_flight() == []


def test_more_tabs_than_pages_and_no_pages_at_all():
    few, browser = PrintSchedule(["<p>only</p>"], tabs=3), FakeChromium()
    run(few, browser)
    assert [i for i, _ in few.take_printed()] == [0] and browser.open_targets == set()
    none = PrintSchedule([], tabs=2)
    run(none, FakeChromium())
    assert none.take_printed() == []
    with pytest.raises(ValueError, match="at least 1"):
        PrintSchedule([], tabs=0)


def test_a_refused_print_is_a_cdp_error_naming_the_method():
    schedule = PrintSchedule(["<p>a</p>"], tabs=1)
    with pytest.raises(CdpError, match=r"^Page.printToPDF: .*Page.printToPDF failed \(code -32000\)"):
        run(schedule, FakeChromium(refuse="Page.printToPDF"))
    schedule = PrintSchedule(["<p>a</p>"], tabs=1)
    with pytest.raises(CdpError, match=r"^Page.setDocumentContent: .*\(code -32000\)"):
        run(schedule, FakeChromium(refuse="Page.setDocumentContent"))


# --- time limits ---------------------------------------------------------------------------------


def test_each_page_gets_its_own_limit_from_when_it_is_first_in_flight():
    clock = Deadlines(100.0, page_timeout_s=10, run_timeout_s=1000)
    assert clock.seconds_left(101.0, []) == 9.0  # starting: the idle limit
    assert clock.seconds_left(102.0, [0]) == 10.0
    assert clock.seconds_left(105.0, [0, 1]) == 7.0  # page 0 is due first
    assert clock.seconds_left(111.0, [1]) == 4.0  # page 0 done in time
    with pytest.raises(PdfError, match=r"did not print page 2 within 10 s \(the limit per page\)$"):
        clock.seconds_left(115.0, [1])


def test_the_idle_limit_restarts_when_the_last_pages_finish():
    clock = Deadlines(0.0, page_timeout_s=10, run_timeout_s=1000)
    clock.seconds_left(5.0, [0])
    assert clock.seconds_left(12.0, []) == 10.0  # closing tabs after the last page
    with pytest.raises(PdfError, match=r"did not answer within 10 s \(starting, or opening a tab\)$"):
        clock.seconds_left(22.0, [])


def test_the_run_limit_holds_however_pages_come_and_go():
    clock = Deadlines(0.0, page_timeout_s=10, run_timeout_s=25)
    for t, page in ((0.0, 0), (8.0, 1), (16.0, 2)):
        clock.seconds_left(t, [page])
    assert clock.seconds_left(24.0, [3]) == 1.0
    with pytest.raises(PdfError, match=r"did not print all pages within 25 s \(the limit per run\)$"):
        clock.seconds_left(25.0, [3])
