"""Secrets never reach the log, whatever key or string they hide in."""

from __future__ import annotations

import io

import orjson
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.logging import REDACTED, configure_logging


def _emit(secrets, **fields):
    out = io.StringIO()
    configure_logging("INFO", secrets, stream=out)
    structlog.get_logger("t").info("probe", **fields)
    return out.getvalue()


def test_secret_keys_are_redacted_at_any_depth():
    line = _emit(
        [],
        api_key="k-123456",
        headers={"Authorization": "Bearer abc.def", "x-feed-token": "feed-999", "ok": 1},
        nested=[{"password": "hunter22"}],
    )
    record = orjson.loads(line)
    assert record["api_key"] == REDACTED
    assert record["headers"] == {"Authorization": REDACTED, "x-feed-token": REDACTED, "ok": 1}
    assert record["nested"] == [{"password": REDACTED}]
    for secret in ("k-123456", "abc.def", "feed-999", "hunter22"):
        assert secret not in line


def test_registered_secret_values_are_scrubbed_from_free_text():
    jwt = "eyJhbGciOi.SECRET.PAYLOAD"
    line = _emit(
        [jwt, "TOTPSEED7"],
        url=f"wss://x/?t={jwt}",
        error=ValueError(f"bad {jwt}"),
        note="TOTPSEED7!",
    )
    assert jwt not in line and "TOTPSEED7" not in line
    record = orjson.loads(line)
    assert record["url"] == f"wss://x/?t={REDACTED}"
    assert record["event"] == "probe"


def test_instrument_token_is_not_mistaken_for_a_secret():
    record = orjson.loads(_emit([], token="2885"))
    assert record["token"] == "2885"


def test_a_short_pin_does_not_rewrite_unrelated_fields_but_its_keys_are_redacted():
    # A 4-digit MPIN equal to an instrument token must not rewrite every tick's event
    # (and so show which token the PIN equals); its own fields are redacted by key name.
    record = orjson.loads(
        _emit(
            ["1234"],
            token="1234",
            note="order 1234 filled at 1234.5",
            pin="1234",
            mpin="1234",
            headers={"X-Password": "1234", "x-mpin": 1234},
            chimera_password="1234",
        )
    )
    assert record["token"] == "1234"
    assert record["note"] == "order 1234 filled at 1234.5"
    assert record["pin"] == REDACTED and record["mpin"] == REDACTED
    assert record["chimera_password"] == REDACTED
    assert record["headers"] == {"X-Password": REDACTED, "x-mpin": REDACTED}


def test_long_secrets_are_still_scrubbed_inside_urls_and_exception_text():
    api_key = "aBcD1234"  # an Angel One API key is 8 characters
    line = _emit(
        [api_key, "1234"],
        url=f"https://api/x?k={api_key}&token=1234",
        error=RuntimeError(f"login refused for key {api_key}"),
    )
    assert api_key not in line
    record = orjson.loads(line)
    assert record["url"] == f"https://api/x?k={REDACTED}&token=1234"
    assert record["error"] == f"login refused for key {REDACTED}"


_ALNUM = st.characters(min_codepoint=48, max_codepoint=122).filter(str.isalnum)


@settings(max_examples=200, deadline=None)
@given(
    short=st.text("0123456789", min_size=4, max_size=7),
    long=st.text(_ALNUM, min_size=8, max_size=40),
    before=st.text(_ALNUM, max_size=20),
    after=st.text(_ALNUM, max_size=20),
)
def test_scrubbing_property(short: str, long: str, before: str, after: str) -> None:
    from chimera_core.logging import SecretRedactor

    redactor = SecretRedactor([short, long])
    text = f"{before}{short}{after}"
    event = redactor(None, "info", {"event": "e", "a": text, "b": f"{before}{long}{after}"})
    if long not in text:
        # A short digit run is never scrubbed from free text...
        assert event["a"] == text
    # ...and a long secret never survives anywhere in it.
    assert long not in event["b"] and REDACTED in event["b"]
