"""The outbox: a channel that is down gets every alert afterwards, in order, marked late,
across a notify restart (real SQLite file, real webhook on 127.0.0.1, real apprise); and a
channel URL's secrets never reach a log line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from chimera_core.config import parse_config
from tests.loopback import REPO, free_port
from tests.tools.notify.stand_ins import WebhookReceiver
from tools.notify.channels import Channel, channel_urls, url_secrets
from tools.notify.outbox import Outbox
from tools.notify.rules import Alert
from tools.notify.service import Notifier

CFG = parse_config("[notify]\nretry_initial_s = 0.05\nretry_max_s = 0.2\nrate_limit = 1000\n")


async def _deliver_for(notifier: Notifier, seconds: float) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(notifier.deliver(ch, stop)) for ch in notifier.channels.values()]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)


async def _deliver_until(notifier: Notifier, done, timeout: float = 30.0) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(notifier.deliver(ch, stop)) for ch in notifier.channels.values()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)


def test_a_down_channel_gets_everything_in_order_after_a_restart(tmp_path):
    port = free_port()
    hook = WebhookReceiver(port)
    db = tmp_path / "outbox.db"
    url = f"json://127.0.0.1:{port}/hook"
    texts = [f"reject {i}" for i in range(12)]

    async def first_run() -> None:
        with Outbox(db) as outbox:
            n = Notifier(CFG, {"hook": Channel("hook", [url], "test")}, outbox, None)
            for i, text in enumerate(texts[:8]):
                n.raise_alerts([Alert("broker_reject", "warning", text, n.started_ns + i)])
            await _deliver_for(n, 0.5)  # the receiver is down: every try fails
            rows = outbox.rows("hook")
            assert [r.status for r in rows] == ["pending"] * 8
            assert rows[0].attempts >= 2 and all(r.attempts == 0 for r in rows[1:])

    async def second_run() -> None:
        with Outbox(db) as outbox:
            n = Notifier(CFG, {"hook": Channel("hook", [url], "test")}, outbox, None)
            for text in texts[8:]:
                n.raise_alerts([Alert("broker_reject", "warning", text, n.started_ns)])
            hook.start()
            await _deliver_until(n, lambda: len(hook.received) >= len(texts))
            rows = outbox.rows("hook")
            assert [r.status for r in rows] == ["sent"] * len(texts)
            assert [r.late for r in rows] == [True] * 8 + [False] * 4

    asyncio.run(first_run())
    try:
        asyncio.run(second_run())
    finally:
        hook.stop()
    got = [r.body.rpartition("): ")[2] if r.body.startswith("LATE") else r.body
           for r in hook.received]  # fmt: skip
    assert got == texts  # every one, once, in the order raised
    assert all(r.body.startswith("LATE (raised ") for r in hook.received[:8])
    assert all(r.title == "[WARNING] chimera broker_reject" for r in hook.received)


def test_channel_urls_come_from_the_environment_only():
    env = {
        "CHIMERA_NOTIFY_URLS": "json://127.0.0.1:1/a, tgram://123456:ABCDEFGHIJ/42",
        "CHIMERA_NOTIFY_URL_OPS": "mailto://127.0.0.1:25?to=a@b.c",
        "OTHER": "json://x",
    }
    assert channel_urls(env) == {
        "default": ["json://127.0.0.1:1/a", "tgram://123456:ABCDEFGHIJ/42"],
        "ops": ["mailto://127.0.0.1:25?to=a@b.c"],
    }
    assert "123456:ABCDEFGHIJ" in url_secrets("tgram://123456:ABCDEFGHIJ/42")
    assert "pa55word-long" in url_secrets("mailtos://me:pa55word-long@smtp.example.com")


def test_a_channel_urls_secret_never_appears_in_logs(tmp_path):
    """Register the channels, then log the URL every way an error might show it: the
    redactor scrubs the URL, its password and a bot token wherever they appear."""
    script = (
        "import structlog\n"
        "from chimera_core.logging import configure_logging\n"
        "from tools.notify.channels import load_channels\n"
        "import os\n"
        "configure_logging('INFO')\n"
        "chans = load_channels(os.environ)\n"
        "log = structlog.get_logger('t')\n"
        "for name, c in chans.items():\n"
        "    log.warning('channel', name=name, display=c.display)\n"
        "log.error('send_failed', detail='POST ' + os.environ['CHIMERA_NOTIFY_URL_HOOK'])\n"
        "log.error('send_failed', detail='token 7000001:AAHsecretBotToken99 refused')\n"
        "log.error('send_failed', detail='login with hunter2-password failed')\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CHIMERA_NOTIFY_URL_HOOK": "json://127.0.0.1:9/hooks/PathSecret12345",
        "CHIMERA_NOTIFY_URL_TG": "tgram://7000001:AAHsecretBotToken99/12345",
        "CHIMERA_NOTIFY_URL_MAIL": "mailtos://me:hunter2-password@smtp.example.com?to=a@b.c",
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         timeout=60, cwd=tmp_path)  # fmt: skip
    text = (out.stdout + out.stderr).decode()
    assert out.returncode == 0, text
    assert text.count("send_failed") == 3
    for secret in ("PathSecret12345", "AAHsecretBotToken99", "hunter2-password"):
        assert secret not in text


def test_prune_forgets_only_what_is_delivered_and_on_telemetry(tmp_path):
    with Outbox(tmp_path / "o.db") as outbox:
        a = [outbox.add("c", Alert("fill", "info", str(i), i)) for i in range(4)]
        outbox.sent(a[0], 10, late=False)
        outbox.published(a[0])
        outbox.sent(a[1], 10, late=False)  # delivered, not yet on telemetry
        outbox.add("c", Alert("fill", "info", "dropped", 5), "dropped", "quiet_hours", 10)
        outbox.published(5)
        assert outbox.prune(before_ns=11) == 2
        assert [(r.seq, r.status) for r in outbox.rows()] == [(2, "sent"), (3, "pending"),
                                                              (4, "pending")]  # fmt: skip
        assert outbox.prune(before_ns=11) == 0
