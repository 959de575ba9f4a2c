"""pywsgi's request headers, parsed without the `email` package when that changes nothing.

gevent's pywsgi (26.9.0) reads a request's header lines with http.client's reader (its
limits: 65,536 bytes a line, 100 headers) and parses them with `email.parser`'s
FeedParser into an `email.message.Message`: 6-9 % of a node's CPU per websocket connect
(bench/README.md, "Connect + join"). Most requests are plain `Name: value` lines, for which
the FeedParser's result is known exactly: each line's name, and its value with the leading
spaces and tabs stripped, in order, duplicates kept, no defects, an empty payload. `parse`
builds that same Message directly when every line is of that shape (printable ASCII, CRLF
line ends, a name of the characters FeedParser accepts, no Content-Type, which steers
FeedParser's body handling); anything else (folded lines, malformed lines, other line ends,
bytes past ASCII, a Content-Type) goes to the FeedParser as before. Reading the lines stays
http.client's, so the limits and their errors are upstream's. tests/unit/test_connect_cost.py
compares both parsers' Messages attribute by attribute over crafted and random inputs.

Behind the version guard (gevent pinned, and Python 3.11, whose http.client and email this
was written against); upstream's parsing elsewhere.
"""

from __future__ import annotations

import email.parser
import re
import sys
from http import client
from typing import Any

from gevent import pywsgi

from .. import versions

_original_message_class = pywsgi.WSGIHandler.MessageClass

# The whole block: `Name: value` lines, then the empty line. Names of FeedParser's header
# characters (printable ASCII but ':'); values of printable ASCII and tabs.
_PLAIN = re.compile(r"(?:[\x21-\x39\x3b-\x7e]+:[\t\x20-\x7e]*\r\n)*\r\n")
# One line: the name, and the value without its leading spaces and tabs (compat32's
# header_source_parse: `value.lstrip(' \t')`, line end removed, trailing blanks kept).
_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]+):[\t ]*([\t\x20-\x7e]*)\r\n")


def parse(text: str, message_class: Any = pywsgi.OldMessage) -> Any:
    """The Message `email.parser.Parser(_class=message_class).parsestr(text)` returns."""
    if _PLAIN.fullmatch(text) is not None:
        fields = _FIELD.findall(text)
        if not any(name.lower() == "content-type" for name, _ in fields):
            message = message_class()
            message._headers = fields
            message._payload = ""
            return message
    return email.parser.Parser(_class=message_class).parsestr(text)


def _message_class(self: Any, fp: Any, *args: Any) -> Any:
    """WSGIHandler.MessageClass: gevent 26.9.0's headers_factory with `parse`."""
    try:
        lines = client._read_headers(fp)  # type: ignore[attr-defined]
    except client.LineTooLong:
        message = pywsgi.OldMessage()
        message.status = "Line too long"
        return message
    return parse(b"".join(lines).decode("iso-8859-1"))


def install() -> bool:
    """Parse pywsgi's request headers with `parse` on the pinned versions; True if so."""
    if sys.version_info[:2] != (3, 11) or not hasattr(client, "_read_headers"):
        return False
    if not versions.matches("request_headers", "gevent"):
        return False
    pywsgi.WSGIHandler.MessageClass = _message_class  # type: ignore[method-assign]
    return True


def uninstall() -> None:
    pywsgi.WSGIHandler.MessageClass = _original_message_class  # type: ignore[method-assign]
