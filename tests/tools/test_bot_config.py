"""`[bot]` configuration and the bot's secrets: clear errors naming the key, and the
token never printed (the redactor knows its key and its value)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog

from chimera_core.config import BOT_OTP_ENV, BOT_TOKEN_ENV, parse_config, secret_values
from chimera_core.errors import ConfigError
from chimera_core.logging import REDACTED, SecretRedactor, configure_logging, is_secret_key
from tests.loopback import chimera

BASE = '[feed]\ntokens = ["2885"]\n'
TOKEN = "700000001:AAH-a-bot-token-that-looks-real-x9Qz"


def test_defaults_serve_nobody_and_use_the_public_api() -> None:
    cfg = parse_config(BASE)
    assert cfg.bot.allowed_users == []
    assert cfg.bot.api_url == "https://api.telegram.org/bot"
    assert cfg.bot.otp is False


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[bot]\nallowed_user = [1]\n", "unknown key 'bot.allowed_user'"),
        ("[bot]\nallowed_users = [-5]\n", "bot.allowed_users"),
        ('[bot]\nallowed_users = ["me"]\n', "bot.allowed_users"),
        ("[bot]\nstale_after_s = 0\n", "bot.stale_after_s"),
        ("[bot]\npoll_timeout_s = 90\n", "bot.poll_timeout_s"),
        ('[bot]\napi_url = "ftp://x/bot"\n', "'bot.api_url' must start with"),
        ('[bot]\napi_url = "http://api.telegram.org/bot"\n', "plain http only on loopback"),
        ('[bot]\ntoken = "123:abc"\n', "unknown key 'bot.token'"),
    ],
)
def test_bad_bot_config_names_the_key(toml: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace(".", r"\.")):
        parse_config(BASE + toml)


def test_loopback_http_is_allowed_for_a_local_bot_api() -> None:
    cfg = parse_config(BASE + '[bot]\napi_url = "http://127.0.0.1:8081/bot"\nallowed_users = [7]\n')
    assert cfg.bot.allowed_users == [7]


def test_the_bot_secrets_are_known_to_the_redactor() -> None:
    env = {BOT_TOKEN_ENV: TOKEN, BOT_OTP_ENV: "JBSWY3DPEHPK3PXPJBSWY3DP", "HOME": "/root"}
    assert set(secret_values(env)) == {TOKEN, "JBSWY3DPEHPK3PXPJBSWY3DP"}
    assert is_secret_key("bot_token") and is_secret_key("telegram_bot_token")
    scrub = SecretRedactor(secret_values(env))
    event = scrub(None, "info", {"event": "x", "url": f"https://api.telegram.org/bot{TOKEN}/getMe",
                                 "bot_token": "anything"})  # fmt: skip
    assert event["bot_token"] == REDACTED
    assert TOKEN not in event["url"] and REDACTED in event["url"]


def test_a_logged_url_with_the_token_is_scrubbed_once_configured() -> None:
    out = io.StringIO()
    configure_logging("INFO", [TOKEN], stream=out)
    structlog.get_logger("test").warning("bot_poll_failed", error=f"POST .../bot{TOKEN}/getUpdates")
    line = json.loads(out.getvalue().splitlines()[-1])
    assert TOKEN not in out.getvalue() and REDACTED in line["error"]
    configure_logging("INFO")


def test_chimera_bot_refuses_to_start_without_token_or_users(tmp_path: Path) -> None:
    (tmp_path / "chimera.toml").write_text(BASE + "[bot]\nallowed_users = []\n")
    p = chimera("bot", cwd=tmp_path, env={BOT_TOKEN_ENV: ""})
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and BOT_TOKEN_ENV in err.decode()
    p = chimera("bot", cwd=tmp_path, env={BOT_TOKEN_ENV: TOKEN})
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "allowed_users is empty" in err.decode()
    assert TOKEN not in err.decode()
