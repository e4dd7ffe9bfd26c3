"""Config: TOML into Structs, errors that name the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from chimera_core.config import (
    Config,
    load_config,
    load_credentials,
    load_env,
    parse_config,
)
from chimera_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_parses_and_is_paper():
    cfg = load_config(ROOT / "chimera.example.toml")
    assert isinstance(cfg, Config)
    assert cfg.mode == "paper"
    assert cfg.feed.url.startswith("ws://127.0.0.1")


def test_defaults_are_paper_on_loopback():
    cfg = parse_config("")
    assert cfg.mode == "paper"
    assert "127.0.0.1" in cfg.feed.url


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('mode = "yolo"', ["'mode'", "'paper'", "'live'"]),
        ('[feed]\nmode = "DEPTH"', ["'feed.mode'", "'LTP'", "'QUOTE'", "'SNAP_QUOTE'"]),
        ("[feed]\ntokenz = []", ["unknown key 'feed.tokenz'", "tokens"]),
        ("colour = 1", ["unknown key 'colour'", "feed", "strategy"]),
        ("[strategy]\nband_k = -2.0", ["'strategy.band_k'", "> 0"]),
        ("[strategy]\nenergy_lookback = 1", ["'strategy.energy_lookback'", ">= 2"]),
        ('[strategy]\ncooldown_s = "soon"', ["'strategy.cooldown_s'", "float"]),
        ("[feed]\ntokens = []", ["'feed.tokens'", "empty"]),
        ('[feed]\ntokens = ["2885", "2885"]', ["'feed.tokens'", "twice"]),
        ('[feed]\ntokens = ["28 85"]', ["'feed.tokens'", "28 85"]),
        ('[feed]\nurl = "http://x"', ["'feed.url'", "ws://"]),
        ("[feed]\nreconnect_initial_s = 5.0\nreconnect_max_s = 1.0", ["reconnect_max_s"]),
        ('mode = "live"', ["live", "loopback"]),
        ("mode = ", ["not valid TOML"]),
    ],
)
def test_bad_config_names_the_key_and_what_is_allowed(text, fragments):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "chimera.toml")
    message = str(err.value)
    assert message.startswith("chimera.toml")
    for fragment in fragments:
        assert fragment in message


def test_missing_config_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"chimera\.example\.toml"):
        load_config(tmp_path / "nope.toml")


def test_credentials_come_from_env_file_and_environment(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "CHIMERA_API_KEY=file-key\nCHIMERA_CLIENT_CODE=A1\nCHIMERA_FEED_TOKEN=ft\nCHIMERA_JWT=jwt\n"
    )
    monkeypatch.setenv("CHIMERA_API_KEY", "env-key")
    env = load_env(env_file)
    cfg = parse_config('[feed]\nurl = "wss://smartapisocket.angelone.in/smart-stream"')
    creds = load_credentials(cfg, env)
    assert creds.api_key == "env-key"  # the environment wins over .env
    assert creds.headers()["Authorization"] == "Bearer jwt"
    assert creds.headers()["x-client-code"] == "A1"


def test_remote_feed_without_credentials_is_refused():
    cfg = parse_config('[feed]\nurl = "wss://smartapisocket.angelone.in/smart-stream"')
    with pytest.raises(ConfigError, match="CHIMERA_JWT") as err:
        load_credentials(cfg, {})
    assert ".env" in str(err.value)


def test_simulator_feed_gets_placeholder_credentials():
    creds = load_credentials(parse_config(""), {})
    assert all(creds.headers().values())


def test_live_angelone_takes_the_feed_token_and_jwt_from_its_login():
    cfg = parse_config(
        'mode = "live"\n[feed]\nurl = "wss://smartapisocket.angelone.in/smart-stream"\n'
        '[execution]\nbroker = "angelone"\n'
    )
    base = {"CHIMERA_API_KEY": "key1", "CHIMERA_CLIENT_CODE": "C123"}
    login = {"CHIMERA_PASSWORD": "pass", "CHIMERA_TOTP_SECRET": "JBSWY3DPEHPK3PXP"}
    creds = load_credentials(cfg, {**base, **login})
    assert (creds.api_key, creds.client_code) == ("key1", "C123")
    # Without the login secrets the feed's own JWT and feed token are required, by name.
    with pytest.raises(ConfigError, match="CHIMERA_FEED_TOKEN, CHIMERA_JWT"):
        load_credentials(cfg, base)
    with pytest.raises(ConfigError, match="CHIMERA_API_KEY"):
        load_credentials(cfg, {"CHIMERA_CLIENT_CODE": "C123", **login})


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[markets.NSE_CM]\nopen = "25:00"\n', ["markets.<NAME>.open"]),
        ("[markets.NSE_CM]\nbogus = 1\n", ["markets.<NAME>.bogus", "entry_cutoff"]),
        ('[markets.NSE_CM]\nentry_cutoff = "16:00"\n', ["markets.NSE_CM.entry_cutoff"]),
        ('[execution]\nsquare_off_at = "16:00"\n', ["square_off", "outside the session"]),
    ],
)
def test_market_calendar_errors_name_the_key_at_load(text, names):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "chimera.toml")
    message = str(err.value)
    assert message.startswith("chimera.toml: ")
    for name in names:
        assert name in message, message
