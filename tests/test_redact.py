"""`scrub_outcome`: an outcome that echoes a secret anywhere comes back without it, and one
that holds none comes back as it is (hypothesis plants secrets in answers of any shape)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from poller.models import PollFailure, PollResult, State
from poller.redact import MASK, pieces, scrub_outcome

SECRET = "s3cr3t-token"
SECRETS = tuple(sorted(pieces(SECRET), key=len, reverse=True))

texts = st.text(max_size=12) | st.sampled_from([SECRET, f"x{SECRET}y", "s3cr3t", "-token"])
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(texts, inner, max_size=4)
    ),
    max_leaves=20,
)


def strings(value: object) -> list[str]:
    """Every string in a JSON-like value, keys included: what must hold no secret."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in strings(k) + strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings(v)]
    return []


@settings(max_examples=300, deadline=None)
@given(status=texts, details=st.dictionaries(texts, values, max_size=6))
def test_a_result_holds_no_secret_and_is_copied_only_if_it_held_one(
    status: str, details: dict[str, Any]
) -> None:
    result = PollResult(remote_status=status, state=State.RUNNING, details=details)
    scrubbed = scrub_outcome(result, SECRETS)
    held = any(SECRET in s for s in strings(status) + strings(details))
    assert isinstance(scrubbed, PollResult)
    assert not any(SECRET in s for s in [scrubbed.remote_status, *strings(scrubbed.details)])
    assert (scrubbed is result) == (not held)
    if held:
        assert MASK in scrubbed.remote_status + "".join(strings(scrubbed.details))


def test_a_secret_is_found_in_keys_lists_and_tuples_deep_down() -> None:
    for details in (
        {"a": [1, 2.5, None, True, {"b": ("x", f"..{SECRET}..")}]},
        {f"key {SECRET}": 1},
        {"n": {"m": {"o": [[[SECRET]]]}}},
    ):
        result = PollResult(remote_status="running", state=State.RUNNING, details=details)
        scrubbed = scrub_outcome(result, SECRETS)
        assert scrubbed is not result
        assert SECRET not in repr(scrubbed)


def test_texts_are_searched_one_by_one_when_a_secret_spans_the_separator() -> None:
    """The texts of one outcome are searched together, joined by a NUL: a secret that holds
    one must still be found, and must not be found across two texts."""
    secret = "ab\x00cd"
    secrets = (secret,)
    apart = PollResult(remote_status="ab", state=State.RUNNING, details={"cd": 1})
    assert scrub_outcome(apart, secrets) is apart
    inside = PollResult(remote_status="x", state=State.RUNNING, details={"k": f"1{secret}2"})
    assert secret not in repr(scrub_outcome(inside, secrets))


def test_a_failure_message_is_scrubbed() -> None:
    failure = PollFailure("auth", f"HTTP 401: token {SECRET} refused")
    scrubbed = scrub_outcome(failure, SECRETS)
    assert isinstance(scrubbed, PollFailure)
    assert SECRET not in scrubbed.message
    assert MASK in scrubbed.message
    clean = PollFailure("network", "connection refused")
    assert scrub_outcome(clean, SECRETS) is clean
