"""The operator commands the engine serves, named once.

A module of its own, importing nothing, so the CLI can know the command names without
importing the control channel (and zmq) on every start; ``chimera_core.control``
imports it from here.
"""

from __future__ import annotations

import enum


class Command(enum.StrEnum):
    """The operator commands the engine serves, named once: the control server, the
    CLI (tools/control_cli.py), replay and the cortex take them from here. ``reduce`` and
    ``reduce_clear`` are the engine's own (recorded) events, never operator commands."""

    STATUS = "status"
    PAUSE = "pause"
    RESUME = "resume"
    HALT = "halt"
    FLATTEN = "flatten"
    APPROVE = "approve"
    REJECT = "reject"
    RESET_HALT = "reset_halt"
    # A genome family's earlier version back in force at each symbol's next bar
    # (arg FAMILY or FAMILY:VERSION; default: the parent of the version in force).
    ROLLBACK = "genome_rollback"
    # Informational: ``chimera notify`` hands the engine an alert it sent or dropped, and
    # the engine only republishes it on the ``alert`` topic. It never reaches the engine's
    # state, so it cannot add risk; it is not an operator command of the CLI.
    ALERT = "alert"


# Commands the engine republishes without applying (no state, no control event).
INFORMATIONAL: frozenset[str] = frozenset({Command.ALERT})
