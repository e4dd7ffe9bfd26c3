"""Streamlit pieces more than one cortex page draws: the operator's login and commands, a
store's rows (or its error), and the approve/reject controls of a proposal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from chimera_core.commands import Command
from chimera_core.errors import ChimeraError
from cortex.runtime import Runtime


def login_id() -> str | None:
    """This browser session's operator login (checked by the runtime on every command)."""
    value = st.session_state.get("operator_login")
    return value if isinstance(value, str) else None


def logged_in(rt: Runtime) -> bool:
    return not rt.can_control() and rt.logins.valid(login_id())


def command(rt: Runtime, name: str, arg: str = "") -> dict[str, Any]:
    return rt.command(name, arg, login_id())


def store_rows(read: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """A store's rows, or an error on the page naming the file when it is damaged or has a
    schema this code does not read (never an empty table that looks like "nothing yet")."""
    try:
        return read()
    except ChimeraError as exc:
        st.error(f"cannot read the store: {exc}")
        return []


LAST_PROPOSAL = "last_proposal"


def proposal_buttons(rt: Runtime, proposal_id: str, approve: Any, reject: Any) -> None:
    """Approve and Reject for one pending proposal (a genome change or a promotion) in the
    columns ``approve`` and ``reject``, sent over the control channel to the engine, which
    decides it; the reply is kept for ``last_proposal_reply``. The caller draws them only
    for a logged-in operator (``logged_in``); the runtime checks the login again."""
    if approve.button("Approve", key=f"approve-{proposal_id}", type="primary"):
        reply = command(rt, Command.APPROVE, proposal_id)
        st.session_state[LAST_PROPOSAL] = ("approve", proposal_id, reply)
    if reject.button("Reject", key=f"reject-{proposal_id}"):
        reply = command(rt, Command.REJECT, proposal_id)
        st.session_state[LAST_PROPOSAL] = ("reject", proposal_id, reply)


def last_proposal_reply() -> None:
    """The engine's answer to this session's last approve/reject of a proposal."""
    last = st.session_state.get(LAST_PROPOSAL)
    if last is not None:
        action, pid, reply = last
        (st.success if reply.get("ok") else st.error)(
            f"{action} {pid}: " + str(reply.get("result") or reply.get("error"))
        )
