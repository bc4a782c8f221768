"""`load_json` reads an answer in any encoding `json` reads, whatever its first bytes; the
shortcut that skips `json.detect_encoding` for a plain answer says what it would say."""

from __future__ import annotations

import codecs
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.sources.client import _plain_utf8, load_json

DOC = {"status": "running", "name": "caf\u00e9 \u2603", "n": [1, 2.5, None]}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=8) | st.sampled_from([b"{", b"[", b"{\x00", b"[\x00\x00\x00", b""]))
def test_the_shortcut_agrees_with_detect_encoding(raw: bytes) -> None:
    assert _plain_utf8(raw) == (json.detect_encoding(raw) == "utf-8")
    assert _plain_utf8(bytearray(raw)) == (json.detect_encoding(raw) == "utf-8")


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]
)
@pytest.mark.parametrize("doc", [DOC, [DOC], "text", 7])
def test_an_answer_is_read_in_every_encoding_json_reads(encoding: str, doc: object) -> None:
    raw = json.dumps(doc, ensure_ascii=False).encode(encoding)
    assert load_json(raw) == doc
    if encoding == "utf-8":
        assert load_json(codecs.BOM_UTF8 + raw) == doc
