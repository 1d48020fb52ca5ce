"""Log formats: JSON lines with zap's field names, text lines with key=value fields, and setup_logging."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from service.runtime.logs import JsonFormatter, TextFormatter, python_level, setup_logging

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_logging(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """setup_logging rewires the root logger: afterwards, drop its handler and put back what it removed.

    pytest adds a fresh capture handler to the root logger for each test phase (setup, call, teardown) and
    removes it at the phase's end; those are left to pytest. The session-wide ones (live and file logging)
    are put back, and the root level is restored, so that later tests log as before.
    """
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    access_level = logging.getLogger("aiohttp.access").level
    phase_handler = type(caplog.handler)
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in saved:  # what setup_logging added
            root.removeHandler(handler)
    for handler in saved:
        if not isinstance(handler, phase_handler) and handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(access_level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_zap_fields() -> None:
    stream = io.StringIO()
    setup_logging("debug", "json", stream)
    log = logging.getLogger("service.runtime.controller")
    log.debug("queued", extra={"controller": "buildworkload"})
    log.info(
        "reconciled %s",
        "w-1",
        # ``name`` is a LogRecord attribute logging will not let extra= overwrite: ``name_`` prints as name.
        extra={"controller": "buildworkload", "namespace": "apps", "name_": "w-1", "reconcileID": "abc-123"},
    )
    log.warning("slow")
    log.error("broken", extra={"attempt": 3, "keys": ["a", "b"]})
    log.critical("very broken")

    lines = json_lines(stream)
    assert [line["level"] for line in lines] == ["debug", "info", "warn", "error", "error"]
    for line in lines:
        assert TS.match(line["ts"]), line["ts"]
        assert line["logger"] == "service.runtime.controller"
    assert list(lines[1]) == [
        "level",
        "ts",
        "logger",
        "msg",
        "controller",
        "namespace",
        "name",
        "reconcileID",
    ]
    assert lines[1]["msg"] == "reconciled w-1"
    assert (lines[1]["controller"], lines[1]["namespace"], lines[1]["name"], lines[1]["reconcileID"]) == (
        "buildworkload",
        "apps",
        "w-1",
        "abc-123",
    )
    assert lines[2] == {"level": "warn", "ts": lines[2]["ts"], "logger": lines[2]["logger"], "msg": "slow"}
    assert (lines[3]["attempt"], lines[3]["keys"]) == (3, ["a", "b"])


def test_extra_fields_never_replace_the_zap_keys() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    logging.getLogger("service.test").info(
        "real", extra={"level": "fake", "ts": 0, "logger": "x", "msg_": "y"}
    )
    [line] = json_lines(stream)
    assert (line["level"], line["logger"], line["msg"]) == ("info", "service.test", "real")
    assert TS.match(line["ts"])


def test_json_timestamp_is_utc_with_milliseconds() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    record.created = 1_700_000_000.25
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["ts"] == "2023-11-14T22:13:20.250Z"


def test_exceptions_carry_error_and_stacktrace() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    log = logging.getLogger("service.test")
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("reconcile failed", extra={"controller": "c"})
    try:
        raise KeyError()
    except KeyError:
        log.error("no message", exc_info=True)
    log.info("with stack", stack_info=True)

    failed, bare, stacked = json_lines(stream)
    assert failed["level"] == "error"
    assert failed["msg"] == "reconcile failed"
    assert failed["error"] == "bad value"
    assert failed["stacktrace"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad value" in failed["stacktrace"]
    assert failed["controller"] == "c"
    assert bare["error"] == "KeyError"  # an exception without text is named by its type
    assert "error" not in stacked and "test_exceptions_carry_error_and_stacktrace" in stacked["stacktrace"]


def test_fields_json_cannot_encode_do_not_lose_the_line() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    log = logging.getLogger("service.test")
    log.info("odd fields", extra={"obj": object(), "counts": {1: 2}, "huge": 2**70})
    [line] = json_lines(stream)
    assert line["msg"] == "odd fields"
    assert line["huge"] == str(2**70)
    assert "object object" in line["obj"]


def test_text_format_prints_key_value_fields() -> None:
    stream = io.StringIO()
    setup_logging("info", "text", stream)
    log = logging.getLogger("service.runtime.controller")
    log.warning("requeue", extra={"controller": "buildworkload", "namespace": "apps", "name_": "w-1"})
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        log.exception("failed")
    text = stream.getvalue()
    first, second, *trace = text.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARN  service\.runtime\.controller: requeue  "
        r"controller=buildworkload namespace=apps name=w-1",
        first,
    ), first
    assert " ERROR service.runtime.controller: failed" in second
    assert trace[0] == "Traceback (most recent call last):" and trace[-1] == "RuntimeError: kaput"
    assert not text.lstrip().startswith("{")


def test_level_filters() -> None:
    stream = io.StringIO()
    setup_logging("warn", "json", stream)
    log = logging.getLogger("service.test")
    log.info("hidden")
    log.debug("hidden too")
    log.warning("shown")
    assert [line["msg"] for line in json_lines(stream)] == ["shown"]


def test_setup_replaces_handlers_and_quiets_access_log() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "json", first)
    setup_logging("info", "json", second)
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("service.test").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1
    assert logging.getLogger("aiohttp.access").level == logging.WARNING


def test_python_levels() -> None:
    assert [python_level(level) for level in ("debug", "info", "warn", "error")] == [
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
        logging.ERROR,
    ]


@pytest.mark.parametrize(
    ("level", "fmt"), [("loud", "json"), ("INFO", "json"), ("info", "xml"), ("info", "")]
)
def test_bad_level_or_format_raises_and_changes_nothing(level: str, fmt: str) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    with pytest.raises(ValueError, match=r"unknown log (level|format)"):
        setup_logging(level, fmt, io.StringIO())
    assert (list(root.handlers), root.level) == before


def test_text_formatter_without_fields() -> None:
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "plain %d", (5,), None)
    record.created = 0.0
    assert TextFormatter().format(record) == "1970-01-01T00:00:00.000Z INFO  svc: plain 5"
