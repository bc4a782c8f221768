"""`whole_url` builds the URL httpx would build, whatever the text (hypothesis compares)."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.sources.client import build_request, whole_url


def same_as_httpx(text: str) -> None:
    try:
        expected = httpx.URL(text)
    except httpx.InvalidURL:
        with pytest.raises(httpx.InvalidURL):
            whole_url(text)
        return
    made = whole_url(text)
    assert made == expected
    assert str(made) == str(expected)
    assert made.raw_path == expected.raw_path
    assert (made.scheme, made.host, made.port) == (expected.scheme, expected.host, expected.port)
    assert made.netloc == expected.netloc
    assert made.query == expected.query


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:8080/status/job-1",
        "https://api.example.com/v1/jobs/a%2Fb?x=1&y=%20",
        "https://api.example.com:443/jobs",  # the default port is dropped
        "http://api.example.com:80",
        "http://host/a/%2E%2E/b",  # an escaped dot-segment stays one
        "http://host/a/../b",  # a real one is resolved
        "http://host/./b",
        "http://host/.well-known/x",
        "http://HOST/x",  # host names are lower-cased
        "http://host/x y",  # quoted
        "http://host/x?q=a b",
        "http://host/é",
        "http://999.1.1.1/x",  # not an address
        "http://1.2.3.4:99999/x",  # not a port
        "http://host:0/x",
        "http://host/x#frag",
        "http://user:pw@host/x",
        "http://host",
        "http://host?x",
        "http://host/%2f",
        "ftp://host/x",
        "http://[::1]:8080/x",
        "http://xn--bcher-kva.example/x",
        "http://-host-/x",
    ],
)
def test_known_urls(text: str) -> None:
    same_as_httpx(text)


_PART = st.text(alphabet="aZ09-._~!$&'()*+,;=:@/?%2Fé #[]\\\"<>`{}|^\x00\x7f", max_size=12)


@settings(max_examples=500, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "ftp"]),
    host=st.sampled_from(["api.example.com", "127.0.0.1", "h", "a-b.c", "1.2.3", "A.com", "x_y"]),
    port=st.sampled_from(["", ":80", ":443", ":8080", ":0", ":65535", ":65536", ":x"]),
    path=_PART,
    query=st.one_of(st.none(), _PART),
)
def test_any_url(scheme: str, host: str, port: str, path: str, query: str | None) -> None:
    slash = "/" if path and not path.startswith("/") else ""
    text = f"{scheme}://{host}{port}{slash}{path}" + ("" if query is None else f"?{query}")
    same_as_httpx(text)


def test_a_request_without_a_body_is_sent_as_built() -> None:
    request = build_request("GET", "http://127.0.0.1:9/status/1", headers={"X-A": "1"})
    assert request.method == "GET"
    assert str(request.url) == "http://127.0.0.1:9/status/1"
    assert request.headers["x-a"] == "1"
    assert request.content == b""


def test_a_request_with_a_body_is_json() -> None:
    request = build_request("POST", "http://h/jobs/statuses", body={"jobIds": ["a"]})
    assert request.headers["content-type"] == "application/json"
    assert request.content == b'{"jobIds":["a"]}'
