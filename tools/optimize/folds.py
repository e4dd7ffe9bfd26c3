"""Walk-forward folds: train/test windows over a study's bar times.

A fold is ``train = [train_start, test_start)`` and ``test = [test_start, test_end)``,
indices into the study's time grid (the sorted union of every instrument's bar times).
Test windows follow each other without gap or overlap, so the test windows' returns
stitch into one out-of-sample equity curve.

- ``rolling``: every train window has the same length and slides with the test window.
- ``anchored``: every train window starts at the first bar and grows.

Lengths are counted in ``bars`` (points of the time grid) or in ``days`` (trading days:
the distinct dates, in ``tz``, that have at least one bar, so a weekend or holiday is no
day at all). With ``days`` each window starts at the first bar of its first day.
The first fold's train window starts at the first bar; folds continue while a whole test
window fits (the bars after the last whole test window are not scored).
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import numpy.typing as npt

from chimera_core.errors import ChimeraError

Scheme = Literal["rolling", "anchored"]
Unit = Literal["bars", "days"]


class FoldError(ChimeraError, ValueError):
    """Folds that cannot be made from the data; the message says what to change."""


class FoldSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How to cut the data: ``train`` and ``test`` lengths in ``unit``; ``folds`` (0 = as
    many as fit) caps the count, keeping the most recent ones."""

    scheme: Scheme = "rolling"
    unit: Unit = "bars"
    train: int = 1000
    test: int = 250
    folds: int = 0
    tz: str = "Asia/Kolkata"


class Fold(msgspec.Struct, frozen=True):
    index: int
    train_start: int
    test_start: int
    test_end: int

    @property
    def train(self) -> tuple[int, int]:
        return self.train_start, self.test_start

    @property
    def test(self) -> tuple[int, int]:
        return self.test_start, self.test_end


def day_starts(ts_ms: npt.NDArray[np.int64], tz: str) -> npt.NDArray[np.int64]:
    """Index of the first bar of each trading day (dates in ``tz``)."""
    try:
        zone = ZoneInfo(tz)
    except (KeyError, ValueError):
        raise FoldError(f"folds tz {tz!r} is not a time zone (e.g. Asia/Kolkata, UTC)") from None
    # The UTC offset of each bar, then whole local days since the epoch.
    import datetime as dt

    offsets = np.fromiter(
        (
            int(dt.datetime.fromtimestamp(int(t) / 1000, zone).utcoffset().total_seconds())  # type: ignore[union-attr]
            * 1000
            for t in ts_ms
        ),
        dtype=np.int64,
        count=ts_ms.size,
    )
    day = (ts_ms + offsets) // 86_400_000
    starts = np.flatnonzero(np.diff(day, prepend=day[0] - 1) != 0)
    return starts.astype(np.int64)


def make_folds(ts_ms: npt.NDArray[np.int64], spec: FoldSpec) -> list[Fold]:
    """The walk-forward folds of ``spec`` over bar times ``ts_ms`` (strictly increasing)."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    n = int(ts.size)
    if spec.train < 1 or spec.test < 1:
        raise FoldError(
            f"folds: train ({spec.train}) and test ({spec.test}) must be >= 1 {spec.unit}"
        )
    if spec.folds < 0:
        raise FoldError(f"folds: folds must be >= 0 (0: as many as fit), got {spec.folds}")
    # Unit u starts at grid point starts[u] (a bar, or a day's first bar).
    starts = np.arange(n, dtype=np.int64) if spec.unit == "bars" else day_starts(ts, spec.tz)
    units = int(starts.size)
    edges = np.append(starts, n)  # unit u spans [edges[u], edges[u + 1])
    out: list[Fold] = []
    u = 0
    while True:
        train_from = 0 if spec.scheme == "anchored" else u
        test_from = u + spec.train
        test_to = test_from + spec.test
        if test_to > units:
            break
        out.append(
            Fold(
                index=len(out),
                train_start=int(edges[train_from]),
                test_start=int(edges[test_from]),
                test_end=int(edges[test_to]),
            )
        )
        u += spec.test
    if not out:
        raise FoldError(
            f"folds: {units} {spec.unit} of data, but one fold needs train {spec.train} + test "
            f"{spec.test} {spec.unit}: shorten --train / --test or give more data"
        )
    if spec.folds and len(out) > spec.folds:
        out = out[-spec.folds :]
        out = [msgspec.structs.replace(f, index=i) for i, f in enumerate(out)]
    return out
