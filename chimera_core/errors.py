"""Typed errors. Messages say what was expected, what came, and what to do."""

from __future__ import annotations


class ChimeraError(Exception):
    """Base of every error Chimera raises on purpose."""


class ConfigError(ChimeraError):
    """The configuration file or environment is wrong; the message names the key."""


class FeedError(ChimeraError):
    """The market-data connection failed in a way the client cannot retry by itself."""


class ProtocolError(ChimeraError):
    """A frame does not follow the SmartAPI v2 binary protocol."""


class IllegalTransition(ChimeraError):
    """A state-machine event that is not allowed from the current state."""


class BrokerReject(ChimeraError):
    """The broker refused an order or request."""


class RiskVeto(ChimeraError):
    """A risk rule refused an intent."""


class BrokerError(ChimeraError):
    """A broker call failed without a clear refusal (network, bad response); retry is safe
    only after reconciliation says the order is not there."""


class RateLimited(BrokerError):
    """The broker refused a call for exceeding its access rate (HTTP 403 'access rate')."""


class AuthError(BrokerError):
    """Login or token refresh failed: credentials are wrong, expired or missing."""


class DuplicateOrder(ChimeraError):
    """A client_order_id the journal already holds: the order was never sent twice."""


class JournalWriteError(ChimeraError):
    """A journal write or commit failed in SQLite (full disk, I/O error); the transaction
    was rolled back, so nothing of it is recorded. ``path`` is the file, ``cause`` the
    sqlite3 error."""

    def __init__(self, message: str, path: str, cause: BaseException) -> None:
        super().__init__(message)
        self.path = path
        self.cause = cause


class JournalCorrupt(ChimeraError):
    """A journal file SQLite cannot read (not a database, malformed, truncated). ``path``
    is the damaged file; the message says how to recover."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path
