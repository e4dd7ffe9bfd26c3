"""Secrets never reach the log, whatever key or string they hide in."""

from __future__ import annotations

import io

import orjson
import structlog

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
