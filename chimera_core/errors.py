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


class StoreError(ChimeraError):
    """A SQLite store cannot be opened or read as this code expects. ``path`` is the file;
    the message names it and says what to do."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class StoreMissing(StoreError):
    """A reader asked for a store file that does not exist (readers never create one)."""


class StoreBusy(StoreError):
    """Another process held the store's lock for longer than the busy timeout."""


class StoreDamaged(StoreError):
    """SQLite cannot read the file (not a database, malformed, truncated). ``cause`` is the
    sqlite3 error."""

    def __init__(self, message: str, path: str, cause: BaseException | None = None) -> None:
        super().__init__(message, path)
        self.cause = cause


class StoreTooNew(StoreError):
    """The file's schema version is newer than this code knows: a newer Chimera wrote it."""


class StoreSchemaError(StoreError):
    """The file lacks a table or column this code reads (a schema it does not know), so its
    reads would be wrong, not merely empty."""


class StoreWriteError(ChimeraError):
    """A store write or commit failed in SQLite (full disk, I/O error); the transaction
    was rolled back, so nothing of it is recorded. ``path`` is the file, ``cause`` the
    sqlite3 error."""

    def __init__(self, message: str, path: str, cause: BaseException) -> None:
        super().__init__(message)
        self.path = path
        self.cause = cause


class JournalWriteError(StoreWriteError):
    """A journal (or paper ledger) write failed; see StoreWriteError."""


class JournalCorrupt(StoreDamaged):
    """A journal file SQLite cannot read (not a database, malformed, truncated). ``path``
    is the damaged file; the message says how to recover."""
