"""The access log's line writer (ext/accesslog.pyx) fed directly, through ``AccessLog.plain``
(the port-80 path: no TLS facts): JSON escaping, nginx templates, buffering, reopen."""

from __future__ import annotations

import json
import os

import pytest
from fastterm._core import AccessLog

from fastterm.accesslog import FIELDS, VARIABLES, compile_format, pieces_of


def write_one(path, spec: str, method=b"GET", target=b"/", agent=None, status=200) -> str:
    log = AccessLog(str(path), pieces_of(spec))
    log.plain("192.0.2.7", method, target, False, status, 80, 120, 100, b"https://r/", agent, 0.0125)
    log.close()
    return path.read_text()


def test_json_line_has_every_field_in_order(tmp_path):
    (line,) = write_one(tmp_path / "a.log", "json", agent=b"curl/8").splitlines()
    record = json.loads(line)
    assert list(record) == list(FIELDS)
    assert record["client"] == "192.0.2.7" and record["status"] == 200 and record["request_time"] == 0.013
    assert (record["bytes_in"], record["bytes_out"], record["body_bytes_out"]) == (80, 120, 20)
    assert record["sni"] is None and record["session_reused"] is None and record["upstream"] is None


def test_json_escapes_what_json_needs_and_keeps_invalid_utf8_readable(tmp_path):
    (line,) = write_one(tmp_path / "a.log", "json", target=b'/a"b\\c\x01\xff\xc3\xa9', agent=b"\t").splitlines()
    record = json.loads(line)
    assert record["path"] == '/a"b\\c\x01\\xff\u00e9' and record["user_agent"] == "\t"


def test_template_escapes_as_nginx_and_fills_missing_values_with_a_dash(tmp_path):
    text = write_one(tmp_path / "a.log", '$request|$status|$http_user_agent|$ssl_protocol|$upstream_addr|'
                     '$request_time|$bytes_sent|$request_length|$ssl_session_reused|$ssl_early_data',
                     target=b'/x"\xff', agent=None)
    assert text == 'GET /x\\x22\\xFF HTTP/1.1|200|-|-|-|0.013|120|80|-|-\n'


def test_lines_wait_in_the_buffer_until_a_flush(tmp_path):
    path = tmp_path / "a.log"
    log = AccessLog(str(path), None)
    log.plain("192.0.2.7", b"GET", b"/", False, 200, 1, 1, 0, None, None, 0.0)
    assert path.read_text() == ""
    log.flush()
    assert len(path.read_text().splitlines()) == 1
    for _ in range(2000):   # past the 64 KiB buffer: written without a flush, whole lines only
        log.plain("192.0.2.7", b"GET", b"/" + b"p" * 40, False, 200, 1, 1, 0, None, None, 0.0)
    written = path.read_text()
    assert len(written) >= 65536 and written.endswith("\n")
    log.close()
    assert len(path.read_text().splitlines()) == 2001


def test_reopen_writes_the_buffer_to_the_old_file_then_the_new_one(tmp_path):
    path = tmp_path / "a.log"
    log = AccessLog(str(path), None)
    log.plain("192.0.2.7", b"GET", b"/old", False, 200, 1, 1, 0, None, None, 0.0)
    os.rename(path, tmp_path / "a.log.1")
    log.reopen()
    log.plain("192.0.2.7", b"GET", b"/new", False, 200, 1, 1, 0, None, None, 0.0)
    log.close()
    assert json.loads((tmp_path / "a.log.1").read_text())["path"] == "/old"
    assert json.loads(path.read_text())["path"] == "/new"


def test_template_variables_are_the_ones_fastterm_logs():
    assert compile_format("$remote_addr ${status}x") == [("", "remote_addr"), (" ", "status"), ("x", None)]
    with pytest.raises(ValueError, match=r'"\$host" is not one fastterm logs'):
        compile_format("$host")
    assert pieces_of("$msec")[0] == (b"", list(VARIABLES).index("msec"))


def test_a_full_disk_loses_the_buffered_lines_and_says_so_once(caplog):
    """/dev/full: every write fails with ENOSPC; the buffer is dropped (memory stays bounded),
    one error line until a write succeeds again, and nothing raises into the loop."""
    log = AccessLog("/dev/full", None)
    with caplog.at_level("ERROR", logger="fastterm.accesslog"):
        for _ in range(3):
            log.plain("192.0.2.7", b"GET", b"/", False, 200, 1, 1, 0, None, None, 0.0)
            log.flush()
    log.close()
    lost = [r.getMessage() for r in caplog.records if "lines lost" in r.getMessage()]
    assert lost == ["access log /dev/full: No space left on device: lines lost"], caplog.text
