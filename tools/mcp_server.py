"""``chimera mcp``: a Model Context Protocol server over the engine, read-mostly.

An assistant can read the engine's state (status over the control channel, the journal,
the approval queue, genome versions, the black box) and can only make things safer
(pause, halt) or propose a genome change into the approval queue for a human. No tool
places, cancels or flattens an order.

stdio by default; ``--http`` serves streamable HTTP on 127.0.0.1 behind
``Authorization: Bearer <control token>``.
"""

from __future__ import annotations

import argparse
import functools
import hmac
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import msgspec
import structlog

from chimera_core.errors import ChimeraError

log = structlog.get_logger(__name__)

BY = "assistant"
REPO = Path(__file__).resolve().parents[1]


class Engine:
    """What the tools read: the config's data dir, journal, queues and control channel."""

    def __init__(self, config: str | None) -> None:
        from chimera_core.config import load_config

        self.cfg = load_config(config)
        self.data_dir = Path(self.cfg.data_dir)
        self.mode_dir = self.data_dir / self.cfg.mode

    def token(self) -> str:
        from chimera_core.config import load_env
        from chimera_core.control import read_token

        return read_token(load_env(None), self.data_dir)

    def control(self, command: str, arg: str = "") -> dict[str, Any]:
        from chimera_core.control import ControlClient

        ctl = self.cfg.control
        with ControlClient(ctl.endpoint, self.token(), ctl.timeout_s, by=BY) as client:
            return client.request(command, arg)

    def journal(self) -> Any:
        from chimera_execution.journal import Journal

        return Journal.open_readonly(self.data_dir, self.cfg.mode)

    def session_decisions(self, only: str | None = None) -> Iterator[tuple[str, list[Any]]]:
        """(session, [(seq, Decision), ...] in order) per black-box session, newest session
        first (or only the session named ``only``): a caller stops once it has enough."""
        from chimera_core.telemetry import TOPIC_TICK, TickView, decoder_for, read_session
        from cortex.sources import sessions

        decode_tick = decoder_for(TOPIC_TICK, TickView)
        for s in sessions(self.data_dir):
            if only is not None and s["name"] != only:
                continue
            rows = []
            for message in read_session(Path(s["path"])):
                if not message.topic.startswith(TOPIC_TICK):
                    continue
                try:
                    rec = decode_tick(message.payload)
                except ChimeraError:
                    continue
                if rec.decision is not None:
                    rows.append((message.seq, rec.decision))
            yield s["name"], rows

    def newest(self, n: int, keep: Callable[[Any], bool]) -> list[tuple[str, int, Any]]:
        """The newest ``n`` decisions ``keep`` accepts, oldest first, reading sessions from
        the newest back only as far as needed."""
        found: list[tuple[str, int, Any]] = []
        for name, rows in self.session_decisions():
            found = [(name, q, d) for q, d in rows if keep(d)] + found
            if len(found) >= n:
                break
        return found[-n:]

    def research_dir(self) -> Path:
        return self.data_dir / "research"

    def latest_health(self) -> Any:
        from chimera_core.telemetry import TOPIC_HEALTH, read_session
        from cortex.sources import sessions

        for s in sessions(self.data_dir):  # newest first
            last = None
            for message in read_session(Path(s["path"])):
                if message.topic == TOPIC_HEALTH:
                    last = message
            if last is not None:
                return last.decode()
        return None


def _study_result(path: Path) -> dict[str, Any] | None:
    """The stored result of the study in ``path`` (None while it has not finished)."""
    import optuna

    from tools.optimize.study import open_storage

    storage = open_storage(path, create=False)
    try:
        parent = optuna.load_study(study_name=path.stem, storage=storage)
    except KeyError:
        return None
    result = parent.user_attrs.get("result")
    return dict(result) if result else None


def _json(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


# Tool names, for the test and the README: none of them places, cancels or flattens.
READ_TOOLS = (
    "status", "positions", "open_orders", "fills", "approvals", "proposals",
    "genome_versions", "recent_decisions", "explain", "governance_history", "health",
    "studies", "study", "backtests", "backtest",
)  # fmt: skip
ACT_TOOLS = ("pause", "halt", "propose_genome_change")


def build_server(engine: Engine) -> Any:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from chimera_governance import approvals as apv
    from cortex import sources

    def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``fn``; our errors reach the assistant with their message, not a bare
        'error executing tool'."""

        @functools.wraps(fn)
        def clear(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ChimeraError as exc:
                log.warning("mcp.tool_failed", tool=fn.__name__, error=str(exc))
                raise ToolError(f"{fn.__name__}: {exc}") from exc

        return mcp.tool()(clear)

    mcp = MCPServer(
        "chimera",
        instructions="Chimera trading engine: read its state; pause or halt it; propose "
        "genome changes for a human to approve. This server never places or cancels orders.",
    )

    @tool
    def status() -> dict[str, Any]:
        """The engine's status over the control channel (states, positions, P&L, halted)."""
        return engine.control("status")

    @tool
    def positions() -> list[dict[str, Any]]:
        """Open positions from the execution journal (read-only)."""
        with engine.journal() as j:
            return list(_json(j.positions()))

    @tool
    def open_orders() -> list[dict[str, Any]]:
        """Orders not yet final, from the execution journal (read-only)."""
        with engine.journal() as j:
            return list(_json(j.open_orders()))

    @tool
    def fills(n: int = 100) -> list[dict[str, Any]]:
        """The newest ``n`` fills from the execution journal (read-only)."""
        with engine.journal() as j:
            return list(_json(j.fills()[-n:]))

    @tool
    def approvals() -> list[dict[str, Any]]:
        """The approval queue: pending intents oldest first, then decided ones."""
        return sources.approvals(engine.mode_dir)

    @tool
    def proposals() -> list[dict[str, Any]]:
        """Genome-change proposals waiting for a human."""
        return apv.proposals(engine.mode_dir / "approvals.db")

    @tool
    def genome_versions() -> list[dict[str, Any]]:
        """Every persisted genome version with its reason and metrics, newest first."""
        return sources.genome_versions(engine.mode_dir)

    @tool
    def recent_decisions(token: str, n: int = 20) -> list[dict[str, Any]]:
        """The last ``n`` decisions for instrument ``token`` from the black box (summaries;
        use ``explain`` for one in full)."""
        rows = engine.newest(n, lambda d: d.token == token)
        return [
            {
                "session": s,
                "seq": q,
                "exchange_ts_ms": d.exchange_ts_ms,
                "close": d.physics.close,
                "intent": _json(d.intent),
                "transitions": _json(d.transitions),
            }
            for s, q, d in rows
        ]

    @tool
    def explain(session: str, seq: int) -> dict[str, Any]:
        """One decision in full: every layer's inputs and outputs."""
        for _, rows in engine.session_decisions(only=session):
            for q, d in rows:
                if q == seq:
                    return dict(_json(d))
        raise ChimeraError(f"no decision with session={session!r} seq={seq} in the black box")

    @tool
    def governance_history(token: str, n: int = 50) -> list[dict[str, Any]]:
        """Regime, leverage and veto history for instrument ``token`` from the black box:
        the newest ``n`` decisions where the regime or the target leverage changed or
        meta-risk vetoed (with every rule and its numbers), oldest first."""
        out: list[dict[str, Any]] = []
        for name, rows in engine.session_decisions():
            events: list[dict[str, Any]] = []
            last: tuple[Any, Any] = (None, None)
            for q, d in rows:
                if d.token != token:
                    continue
                now = (
                    None if d.drift is None else d.drift.regime.value,
                    None if d.capital is None else d.capital.target_leverage,
                )
                vetoes = [] if d.meta_risk is None else list(_json(d.meta_risk.vetoes))
                if now == last and not vetoes:
                    continue
                events.append({
                    "session": name, "seq": q, "exchange_ts_ms": d.exchange_ts_ms,
                    "regime": now[0],
                    "drift_score": None if d.drift is None else d.drift.drift_score,
                    "target_leverage": now[1], "vetoes": vetoes,
                    "halt": bool(d.meta_risk and d.meta_risk.halt), "state": d.state,
                })  # fmt: skip
                last = now
            out = events + out
            if len(out) >= n:
                break
        return out[-n:]

    @tool
    def studies() -> list[dict[str, Any]]:
        """`chimera optimize` studies under data_dir/research: strategy, sampler, whether its
        candidate may be proposed (and why not), the candidate and its out-of-sample metrics."""
        out = []
        for path in sorted(engine.research_dir().glob("*.db")):
            result = _study_result(path)
            if result is None:
                out.append({"study": path.stem, "finished": False})
                continue
            out.append({
                "study": path.stem, "finished": True, "strategy": result.get("strategy"),
                "sampler": result.get("sampler"), "proposable": result.get("proposable"),
                "not_proposable_because": result.get("not_proposable_because"),
                "candidate": result.get("candidate"), "oos": result.get("oos"),
            })  # fmt: skip
        return out

    @tool
    def study(name: str) -> dict[str, Any]:
        """One study's stored result: folds, picks, in-sample vs out-of-sample, guards."""
        from tools.optimize.study import storage_path

        path = storage_path(engine.research_dir(), name)
        result = _study_result(path) if path.is_file() else None
        if result is None:
            raise ChimeraError(f"no finished study {name!r} under {engine.research_dir()}")
        return result

    @tool
    def backtests() -> list[dict[str, Any]]:
        """`chimera backtest` results under data_dir/backtests: name, mode, strategy, its
        input data (with its hash), code version and the headline metrics."""
        out = []
        for path in sorted((engine.data_dir / "backtests").glob("*/result.json")):
            r = msgspec.json.decode(path.read_bytes())
            metrics = r.get("metrics") or {}
            out.append({
                "name": path.parent.name, "mode": r.get("mode"), "strategy": r.get("strategy"),
                "data": r.get("data"), "code_version": r.get("code_version"),
                "metrics": {k: metrics.get(k) for k in (
                    "total_return", "sharpe", "max_drawdown", "trades", "win_rate",
                    "profit_factor")},
            })  # fmt: skip
        return out

    @tool
    def backtest(name: str) -> dict[str, Any]:
        """One backtest's result.json (settings, input hash, code version, metrics)."""
        path = engine.data_dir / "backtests" / name / "result.json"
        if "/" in name or ".." in name or not path.is_file():
            raise ChimeraError(f"no backtest {name!r} under {engine.data_dir / 'backtests'}")
        return dict(msgspec.json.decode(path.read_bytes()))

    @tool
    def health() -> dict[str, Any]:
        """The latest Health record from the black box, else the engine's status."""
        h = engine.latest_health()
        return {"source": "blackbox", "health": _json(h)} if h is not None else {
            "source": "status", "status": engine.control("status")
        }  # fmt: skip

    @tool
    def pause(reason: str = "") -> dict[str, Any]:
        """Stop opening new positions (acts at once; logged as the assistant's)."""
        log.warning("mcp.pause", by=BY, reason=reason)
        return engine.control("pause", reason or f"by {BY}")

    @tool
    def halt(reason: str = "") -> dict[str, Any]:
        """Kill switch: halt the engine (acts at once; logged as the assistant's)."""
        log.warning("mcp.halt", by=BY, reason=reason)
        return engine.control("halt", reason or f"by {BY}")

    @tool
    def propose_genome_change(family: str, params: dict[str, Any], reason: str) -> dict[str, Any]:
        """Propose new genome parameters for ``family``: queued for a human, never applied."""
        pid = apv.propose(
            engine.mode_dir / "approvals.db",
            "genome_change",
            {"family": family, "params": params},
            reason,
            BY,
            int(time.time() * 1000),
        )
        log.info("mcp.proposal", by=BY, proposal_id=pid, family=family)
        return {"proposal_id": pid, "status": apv.PENDING}

    def _doc(path: Path) -> Callable[[], str]:
        return lambda: path.read_text(encoding="utf-8")

    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for p in docs:
        if p.is_file():
            mcp.resource(f"chimera://docs/{p.name}", name=p.stem, mime_type="text/markdown")(
                _doc(p)
            )

    @mcp.resource("chimera://config/schema", name="config_schema", mime_type="application/json")
    def config_schema() -> str:
        from chimera_core.config import Config

        return msgspec.json.encode(msgspec.json.schema(Config)).decode()

    return mcp


ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def bearer_guard(app: ASGIApp, token: str) -> ASGIApp:
    """Refuse (401) any HTTP request without ``Authorization: Bearer <token>``."""
    want = f"Bearer {token}".encode()

    async def guarded(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, want):
                log.warning("mcp.http_refused", path=scope.get("path"))
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"text/plain")],
                    }
                )
                await send({"type": "http.response.body", "body": b"bad or missing token\n"})
                return
        await app(scope, receive, send)

    return guarded


def main(argv: list[str]) -> int:
    from chimera_core.config import default_config_path
    from chimera_core.logging import configure_logging

    parser = argparse.ArgumentParser(prog="chimera mcp", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=default_config_path(), help="TOML config")
    parser.add_argument("--http", action="store_true", help="streamable HTTP on 127.0.0.1")
    parser.add_argument("--port", type=int, default=7010, help="HTTP port (with --http)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        engine = Engine(args.config)
        server = build_server(engine)
        if not args.http:
            # stdout is the protocol: JSON logs go to stderr.
            configure_logging("INFO", stream=sys.stderr)
            server.run("stdio")
            return 0
        token = engine.token()
        configure_logging("INFO", [token])  # never log the bearer token
    except ChimeraError as exc:
        print(f"chimera mcp: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    app = bearer_guard(server.streamable_http_app(host="127.0.0.1"), token)
    log.info("mcp.http_serving", host="127.0.0.1", port=args.port)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
