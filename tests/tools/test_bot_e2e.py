"""`chimera bot` end to end: a real bot process against a local Bot API stand-in, driving a
real `chimera live` on `chimera sim` over the control channel (loopback only).

The tests run in file order on one engine session: an approval through the button first
(it needs an engine that trades), then the refused, the one-tap and the confirmed commands,
then replays and stale updates."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.loopback import chimera, free_port, wait_port
from tools.sim.telegram import TelegramStandIn, buttons

pytestmark = pytest.mark.timeout(180)

OPERATOR = 424242  # allow-listed
DEPUTY = 515151  # allow-listed too
STRANGER = 13131313  # not
BOT_TOKEN = "700000001:AAH-standin-token-for-tests-only-x9Qz"
OTP_SECRET = pyotp.random_base32()


class Session:
    def __init__(self, cwd: Path, api: TelegramStandIn, procs: dict[str, Any]) -> None:
        self.cwd = cwd
        self.api = api
        self.procs = procs
        self.totp = pyotp.TOTP(OTP_SECRET)
        self.used: set[str] = set()
        self.old_logs: list[str] = []

    def status(self) -> dict[str, Any]:
        p = chimera("status", cwd=self.cwd)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err.decode()[-1000:]
        return json.loads(out)["result"]

    def bot_log(self) -> str:
        out, err = self.procs["bot"].output()
        return (out + err).decode()

    def say(self, text: str, user: int = OPERATOR, **kw: Any) -> tuple[dict[str, Any], int]:
        """Send ``text``; (the update, how many messages the user had before)."""
        before = len(self.api.messages_to(user))
        return self.api.push_message(user, text, **kw), before

    def reply(self, before: int, contains: str, user: int = OPERATOR) -> dict[str, Any]:
        return self.api.wait_for(user, lambda m: contains in m["text"], after=before)

    def code(self) -> str:
        """A valid code not used yet: the bot accepts each code once, and the steps either
        side of now (its one-step window) when the current one is spent."""
        now = time.time()
        for step in (0, 1, -1):
            code = self.totp.at(now + 30 * step)
            if code not in self.used:
                self.used.add(code)
                return code
        raise AssertionError("three codes used within a minute")

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.bot_log().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                out.append(event)
        return out


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    cwd = tmp_path_factory.mktemp("bot")
    sim_port, tel_port, ctl_port = free_port(), free_port(), free_port()
    api = TelegramStandIn(BOT_TOKEN).start()
    (cwd / "chimera.toml").write_text(
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nwait_for_subscriber_s = 0\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\ntimeout_s = 20.0\n'
        # Every intent waits for a human, and for long: exchange time runs ~400x wall time.
        "[governance]\napproval_size_limit = 1.0\napproval_min_confidence = 0.0\n"
        "approval_ttl_s = 604800\n"
        f'[bot]\nallowed_users = [{OPERATOR}, {DEPUTY}]\notp = true\napi_url = "{api.api_url}"\n'
        "poll_timeout_s = 1\napprovals_poll_s = 0.5\nstale_after_s = 60\n"
    )
    (cwd / ".env").write_text(
        f"CHIMERA_TELEGRAM_BOT_TOKEN={BOT_TOKEN}\nCHIMERA_BOT_OTP_SECRET={OTP_SECRET}\n"
    )
    procs: dict[str, Any] = {}
    try:
        procs["sim"] = chimera("sim", "--port", str(sim_port), "--rate", "2000", cwd=cwd)
        wait_port(sim_port)
        procs["live"] = chimera("live", cwd=cwd)
        wait_port(ctl_port)
        deadline = time.monotonic() + 60
        while not (cwd / "data" / "control.token").exists():
            assert time.monotonic() < deadline, "the engine never wrote its control token"
            time.sleep(0.2)
        procs["bot"] = chimera("bot", cwd=cwd)
        deadline = time.monotonic() + 60
        while "getUpdates" not in api.calls:
            assert procs["bot"].poll() is None, procs["bot"].output()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the bot never polled"
            time.sleep(0.1)
        yield Session(cwd, api, procs)
    finally:
        for name in ("bot", "live", "sim"):
            p = procs.get(name)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        api.stop()


def test_the_approve_button_approves_a_real_pending_request(session: Session) -> None:
    from chimera_governance.approvals import ApprovalsView

    api = session.api
    # The bot announces the engine's first pending approval with Approve / Reject buttons.
    prompt = api.wait_for(
        OPERATOR, lambda m: any(b.startswith("ap:") for b in buttons(m)), timeout=120
    )
    approval_id = next(b for b in buttons(prompt) if b.startswith("ap:"))[3:]
    db = session.cwd / "data" / "paper" / "approvals.db"
    with ApprovalsView(db) as view:
        assert view.record(approval_id).status == "PENDING"
    before = len(api.messages_to(OPERATOR))
    api.push_button(OPERATOR, "ap:" + approval_id, prompt)
    confirm = api.wait_for(OPERATOR, lambda m: any(b.startswith("cf:") for b in buttons(m)),
                           after=before)  # fmt: skip
    # Still pending: the tap alone adds no risk.
    with ApprovalsView(db) as view:
        assert view.record(approval_id).status == "PENDING"
    before = len(api.messages_to(OPERATOR))
    api.push_button(OPERATOR, next(b for b in buttons(confirm) if b.startswith("cf:")), confirm)
    session.reply(before, "/otp CODE")
    _, before = session.say("/otp " + session.code())
    session.reply(before, f"approve {approval_id}: done")
    # The prompt now says how it was decided, and has no buttons left.
    edited = api.wait_for(OPERATOR, lambda m: m["message_id"] == prompt["message_id"]
                          and "APPROVED" in m["text"])  # fmt: skip
    assert buttons(edited) == [] and f"by {OPERATOR}" in edited["text"]
    with ApprovalsView(db) as view:
        record = view.record(approval_id)
    # The engine recorded who decided: the Telegram user, not a generic "operator".
    assert (record.status, record.decided_by) == ("APPROVED", f"telegram:{OPERATOR}")
    # The command went over the control channel logged with the Telegram user who sent it.
    assert any(
        e["command"] == "approve" and e["arg"] == approval_id and e["user_id"] == OPERATOR
        for e in session.events("bot_command")
    )


def test_a_stranger_halt_is_refused_and_reported(session: Session) -> None:
    session.say("/halt", user=STRANGER)
    refusals = session.cwd / "data" / "bot" / "refusals.jsonl"
    deadline = time.monotonic() + 30
    while not refusals.exists() or STRANGER not in [
        json.loads(line)["user_id"] for line in refusals.read_text().splitlines()
    ]:
        assert time.monotonic() < deadline, "the refusal was not recorded"
        time.sleep(0.1)
    record = json.loads(refusals.read_text().splitlines()[-1])
    assert record["event"] == "bot_refused" and record["text"] == "/halt"
    assert session.status()["halted"] is False
    assert session.api.messages_to(STRANGER) == []  # not even an answer
    assert [e["user_id"] for e in session.events("bot_refused")] == [STRANGER]


def test_an_operator_halt_halts_in_one_tap_and_resume_needs_confirmation_and_code(
    session: Session,
) -> None:
    _, before = session.say("/halt")
    session.reply(before, "halt: done")
    assert session.status()["halted"] is True
    # /resume asks first; the engine stays halted until the tap and the code.
    _, before = session.say("/resume")
    confirm = session.api.wait_for(
        OPERATOR, lambda m: any(b.startswith("cf:") for b in buttons(m)), after=before
    )
    assert session.status()["halted"] is True
    before = len(session.api.messages_to(OPERATOR))
    session.api.push_button(OPERATOR, next(b for b in buttons(confirm) if b.startswith("cf:")),
                            confirm)  # fmt: skip
    session.reply(before, "/otp CODE")
    _, before = session.say("/otp 000000" if "000000" not in session.used else "/otp 111111")
    session.reply(before, "wrong or already used code")
    assert session.status()["halted"] is True
    _, before = session.say("/otp " + session.code())
    session.reply(before, "resume: done")
    assert session.status()["halted"] is False


def test_a_replayed_or_stale_update_is_ignored(session: Session) -> None:
    assert session.status()["halted"] is False
    halt, before = session.say("/pause")
    session.reply(before, "pause: done")
    assert session.status()["paused"] is True
    # Undo the pause through the bot (a confirmed resume), then replay the /pause update.
    _, before = session.say("/resume")
    confirm = session.api.wait_for(
        OPERATOR, lambda m: any(b.startswith("cf:") for b in buttons(m)), after=before
    )
    before = len(session.api.messages_to(OPERATOR))
    session.api.push_button(OPERATOR, next(b for b in buttons(confirm) if b.startswith("cf:")),
                            confirm)  # fmt: skip
    session.reply(before, "/otp CODE")
    _, before = session.say("/otp " + session.code())
    session.reply(before, "resume: done")
    assert session.status()["paused"] is False
    session.api.replay(halt)
    # A stale /halt, then a fresh /status: updates are handled in order, so once /status is
    # answered the two before it have been judged.
    session.say("/halt", age_s=3600)
    _, before = session.say("/status")
    session.reply(before, "state ")
    status = session.status()
    assert status["paused"] is False and status["halted"] is False
    assert [e["update_id"] for e in session.events("bot_update_replayed")] == [halt["update_id"]]
    assert len(session.events("bot_update_stale")) == 1


def test_the_read_only_commands_answer(session: Session) -> None:
    for command, expected in (
        ("/status", "state "),
        ("/positions", ""),
        ("/pnl", "net "),
        ("/daily", "Chimera paper report"),
        ("/approvals", ""),
        ("/help", "/halt"),
    ):
        _, before = session.say(command)
        reply = session.reply(before, expected)
        assert not reply["text"].startswith("failed:"), reply["text"]
    # Nothing a read-only command does goes to the engine but a status request.
    assert {e["command"] for e in session.events("bot_command")} <= {
        "approve", "halt", "pause", "resume", "status",
    }  # fmt: skip


def test_the_reject_button_rejects_in_one_tap(session: Session) -> None:
    from chimera_governance.approvals import ApprovalsView

    api = session.api
    decided = {e["arg"] for e in session.events("bot_command") if e["command"] == "approve"}
    prompt = api.wait_for(
        OPERATOR,
        lambda m: any(b.startswith("ap:") and b[3:] not in decided for b in buttons(m)),
        timeout=120,
    )
    approval_id = next(b for b in buttons(prompt) if b.startswith("rj:"))[3:]
    db = session.cwd / "data" / "paper" / "approvals.db"
    # A stranger's tap on the same button is refused and reported; nothing is decided.
    refusals = session.cwd / "data" / "bot" / "refusals.jsonl"
    seen = len(refusals.read_text().splitlines())
    api.push_button(STRANGER, "rj:" + approval_id, prompt)
    deadline = time.monotonic() + 30
    while len(refusals.read_text().splitlines()) == seen:
        assert time.monotonic() < deadline, "the stranger's tap was not reported"
        time.sleep(0.1)
    assert json.loads(refusals.read_text().splitlines()[-1])["text"] == "rj:" + approval_id
    with ApprovalsView(db) as view:
        assert view.record(approval_id).status == "PENDING"
    before = len(api.messages_to(OPERATOR))
    api.push_button(OPERATOR, "rj:" + approval_id, prompt)
    session.reply(before, f"reject {approval_id}: done")
    edited = api.wait_for(OPERATOR, lambda m: m["message_id"] == prompt["message_id"]
                          and "REJECTED" in m["text"])  # fmt: skip
    assert buttons(edited) == []
    with ApprovalsView(db) as view:
        assert view.record(approval_id).status == "REJECTED"
        pending = len(view.pending())
    # This engine queues an intent on nearly every tick: a few are sent with buttons each
    # poll and the rest summarised, not one message each.
    announced = len(session.events("bot_approval_announced"))
    assert any("more approvals waiting" in m["text"] for m in api.messages_to(OPERATOR))
    assert announced < pending, (announced, pending)


def test_a_proposal_is_announced_and_its_reject_button_decides_it(session: Session) -> None:
    from chimera_governance.approvals import proposals, propose

    api = session.api
    db = session.cwd / "data" / "paper" / "approvals.db"
    change = {"family": "default", "params": {"energy_threshold": 0.01}}
    proposal_id = propose(
        db, "genome_change", change, "a test proposal", "assistant", int(time.time() * 1000)
    )
    prompt = api.wait_for(OPERATOR, lambda m: ("rj:" + proposal_id) in buttons(m))
    assert "genome_change" in prompt["text"] and "a test proposal" in prompt["text"]
    before = len(api.messages_to(OPERATOR))
    api.push_button(OPERATOR, "rj:" + proposal_id, prompt)
    session.reply(before, f"reject {proposal_id}: done")
    api.wait_for(OPERATOR, lambda m: m["message_id"] == prompt["message_id"]
                 and "REJECTED" in m["text"])  # fmt: skip
    (decided,) = [p for p in proposals(db) if p["proposal_id"] == proposal_id]
    assert (decided["status"], decided["decided_by"]) == ("REJECTED", f"telegram:{OPERATOR}")


def test_flatten_cancelled_or_with_wrong_codes_never_reaches_the_engine(session: Session) -> None:
    api = session.api
    _, before = session.say("/flatten")
    confirm = api.wait_for(OPERATOR, lambda m: any(b.startswith("cx:") for b in buttons(m)),
                           after=before)  # fmt: skip
    before = len(api.messages_to(OPERATOR))
    api.push_button(OPERATOR, next(b for b in buttons(confirm) if b.startswith("cx:")), confirm)
    session.reply(before, "flatten: cancelled")
    # Confirmed, then three wrong codes: dropped.
    _, before = session.say("/flatten")
    confirm = api.wait_for(OPERATOR, lambda m: any(b.startswith("cf:") for b in buttons(m)),
                           after=before)  # fmt: skip
    before = len(api.messages_to(OPERATOR))
    api.push_button(OPERATOR, next(b for b in buttons(confirm) if b.startswith("cf:")), confirm)
    session.reply(before, "/otp CODE")
    # Another allow-listed user cannot use this confirmation (a tap on its button, as in a
    # group chat: the answer goes to the button's chat), nor send its code.
    before = len(api.messages_to(OPERATOR))
    api.push_button(DEPUTY, next(b for b in buttons(confirm) if b.startswith("cf:")), confirm)
    session.reply(before, "expired or is not yours")
    deputy_before = len(api.messages_to(DEPUTY))
    api.push_message(DEPUTY, "/otp 123456")  # whatever the code: none waits for one
    api.wait_for(DEPUTY, lambda m: "no confirmed command is waiting" in m["text"],
                 after=deputy_before)  # fmt: skip
    wrong = next(c for c in ("000000", "111111", "222222") if c not in session.used)
    for _ in range(3):
        _, before = session.say("/otp " + wrong)
    session.reply(before, "too many wrong codes; cancelled")
    _, before = session.say("/otp 123456")  # whatever the code: nothing waits for one
    session.reply(before, "no confirmed command is waiting")
    # The confirmation's button cannot be pressed again either.
    before = len(api.messages_to(OPERATOR))
    api.push_button(OPERATOR, next(b for b in buttons(confirm) if b.startswith("cf:")), confirm)
    session.reply(before, "expired or is not yours")
    assert "flatten" not in {e["command"] for e in session.events("bot_command")}


def test_a_restarted_bot_acts_on_no_update_twice(session: Session) -> None:
    api = session.api
    old = session.procs["bot"]
    old.send_signal(signal.SIGINT)
    assert old.wait(timeout=30) == 0, old.output()[1].decode()[-2000:]
    session.old_logs.append(session.bot_log())
    state = json.loads((session.cwd / "data" / "bot" / "state.json").read_text())
    with api._lock:
        history = list(api._updates)
    assert state["last_update_id"] == history[-1]["update_id"]
    calls = len(api.calls)
    session.procs["bot"] = chimera("bot", cwd=session.cwd)
    deadline = time.monotonic() + 60
    while "getUpdates" not in api.calls[calls:]:
        assert time.monotonic() < deadline, "the restarted bot never polled"
        time.sleep(0.1)
    # A Bot API that hands the whole history out again (every /halt, /pause, /otp ...).
    # The stand-in forgets a replay once it has answered a poll with it; a poll whose answer
    # the client lost (a read timeout on a loaded machine) would lose it, so what was not
    # seen yet is handed out again until every update has been seen and ignored.
    want = [u["update_id"] for u in history]
    deadline = time.monotonic() + 60
    while True:
        seen = {e["update_id"] for e in session.events("bot_update_replayed")}
        missing = [u for u in history if u["update_id"] not in seen]
        if not missing:
            break
        assert time.monotonic() < deadline, f"never seen again: {[u['update_id'] for u in missing]}"
        for update in missing:
            api.replay(update)
        time.sleep(1.0)
    _, before = session.say("/status")
    session.reply(before, "state ")
    replayed = [e["update_id"] for e in session.events("bot_update_replayed")]
    assert sorted(set(replayed)) == want  # each one ignored (some maybe more than once)
    assert [e["command"] for e in session.events("bot_command")] == ["status"]
    status = session.status()
    assert status["halted"] is False and status["paused"] is False


def test_the_bot_token_never_reaches_the_logs(session: Session) -> None:
    for log in [*session.old_logs, session.bot_log()]:
        assert BOT_TOKEN not in log
        assert OTP_SECRET not in log
    assert session.api.unauthorized == 0
