"""The overfitting guards against independent computations: the deflated Sharpe ratio from
scipy.stats (norm, skew, kurtosis) and the paper's own worked example, and PBO from a plain
loop over itertools.combinations with scipy.stats.rankdata; plus the statistical behaviour
each guard exists for, on seeded data (deterministic, so it cannot flake)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from tools.optimize import guards
from tools.optimize.guards import (
    GuardInputError,
    GuardResult,
    PboResult,
    deflated_sharpe,
    expected_max_sharpe,
    pbo_cscv,
    probabilistic_sharpe,
)

REL = {"rel": 1e-9, "abs": 1e-12}


# ---------------------------------------------------------------------------------------
# references, written without the module's code
# ---------------------------------------------------------------------------------------


def reference_dsr(returns: np.ndarray, trial_sharpes: np.ndarray) -> tuple[float, float, float]:
    """(DSR, SR, SR0) straight from Bailey & López de Prado (2014), eqs. for SR0 and PSR."""
    n_obs = len(returns)
    sr = np.mean(returns) / np.std(returns, ddof=1)
    skew = stats.skew(returns)
    kurt = stats.kurtosis(returns, fisher=False)
    n = len(trial_sharpes)
    if n == 1:
        sr0 = 0.0
    else:
        quantiles = (1 - np.euler_gamma) * stats.norm.ppf(1 - 1 / n) + np.euler_gamma * (
            stats.norm.ppf(1 - 1 / (n * np.e))
        )
        sr0 = np.std(trial_sharpes, ddof=1) * quantiles
    z = (sr - sr0) * np.sqrt(n_obs - 1) / np.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    return float(stats.norm.cdf(z)), float(sr), float(sr0)


def reference_sharpe(column: np.ndarray) -> float:
    """Per-period Sharpe of one column, with the module's convention for a constant one."""
    if np.ptp(column) == 0:
        return 0.0 if column[0] == 0 else math.copysign(math.inf, column[0])
    return float(np.mean(column) / np.std(column, ddof=1))


def reference_pbo(perf: np.ndarray, n_splits: int) -> tuple[float, list[float]]:
    """CSCV as the paper lays it out: one combination at a time."""
    n_rows, n_trials = perf.shape
    size = n_rows // n_splits
    used = perf[n_rows - size * n_splits :]
    parts = [used[i * size : (i + 1) * size] for i in range(n_splits)]
    logits = []
    overfit = 0
    for chosen in itertools.combinations(range(n_splits), n_splits // 2):
        rest = [i for i in range(n_splits) if i not in chosen]
        train = np.concatenate([parts[i] for i in chosen])
        test = np.concatenate([parts[i] for i in rest])
        sr_train = [reference_sharpe(train[:, j]) for j in range(n_trials)]
        sr_test = [reference_sharpe(test[:, j]) for j in range(n_trials)]
        best = int(np.argmax(sr_train))
        rank = stats.rankdata(sr_test, method="average")[best]
        omega = rank / (n_trials + 1)
        logit = math.log(omega / (1 - omega))
        logits.append(logit)
        overfit += logit <= 0
    return overfit / len(logits), logits


# ---------------------------------------------------------------------------------------
# deflated Sharpe ratio
# ---------------------------------------------------------------------------------------


@st.composite
def return_series(draw: st.DrawFn) -> np.ndarray:
    n_obs = draw(st.integers(2, 600))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    family = draw(st.sampled_from(["normal", "student_t", "lognormal", "sparse"]))
    if family == "normal":
        x = rng.normal(size=n_obs)
    elif family == "student_t":  # fat tails
        x = rng.standard_t(3, n_obs)
    elif family == "lognormal":  # skewed
        x = rng.lognormal(0.0, 0.8, n_obs) - 1.4
    else:  # out of the market most bars
        x = rng.normal(size=n_obs) * (rng.random(n_obs) < 0.2)
    drift = draw(st.sampled_from([-0.3, 0.0, 0.05, 0.3]))
    scale = draw(st.sampled_from([1e-4, 1e-2, 0.2]))
    r = scale * (x + drift)
    assume(np.ptp(r) > 0)
    return r


@st.composite
def trial_sharpe_sets(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.normal(
        draw(st.sampled_from([-0.05, 0.0, 0.05])), draw(st.sampled_from([1e-3, 0.05, 0.3])), n
    )


@settings(max_examples=300, deadline=None)
@given(returns=return_series(), trials=trial_sharpe_sets(), ppy=st.sampled_from([252.0, 94_500.0]))
def test_deflated_sharpe_matches_scipy_reference(
    returns: np.ndarray, trials: np.ndarray, ppy: float
) -> None:
    want, sr, sr0 = reference_dsr(returns, trials)
    got = deflated_sharpe(returns, trials, periods_per_year=ppy)
    assert isinstance(got, GuardResult)
    assert 0.0 <= got.value <= 1.0
    assert got.value == pytest.approx(want, **REL)
    assert got.passed is None
    d = got.detail
    assert d["sr"] == pytest.approx(sr, **REL)
    assert d["sr0"] == pytest.approx(sr0, **REL)
    assert d["sr_annualised"] == pytest.approx(sr * math.sqrt(ppy), **REL)
    assert d["skew"] == pytest.approx(float(stats.skew(returns)), rel=1e-9, abs=1e-9)
    assert d["kurtosis"] == pytest.approx(float(stats.kurtosis(returns, fisher=False)), rel=1e-9)
    assert d["n_trials"] == len(trials) and d["T"] == len(returns)


@settings(max_examples=100, deadline=None)
@given(returns=return_series())
def test_one_trial_deflates_nothing(returns: np.ndarray) -> None:
    """N = 1: nothing was selected, SR0 = 0 and the DSR is the plain PSR(0)."""
    got = deflated_sharpe(returns, np.array([0.7]), periods_per_year=252)
    assert got.detail["sr0"] == 0.0
    assert got.value == got.detail["psr_zero"]
    sr = np.mean(returns) / np.std(returns, ddof=1)
    skew, kurt = stats.skew(returns), stats.kurtosis(returns, fisher=False)
    psr0 = stats.norm.cdf(
        sr * np.sqrt(len(returns) - 1) / np.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    )
    assert got.value == pytest.approx(psr0, **REL)


@settings(max_examples=100, deadline=None)
@given(returns=return_series())
def test_flipping_the_sign_of_returns_flips_psr(returns: np.ndarray) -> None:
    up = deflated_sharpe(returns, np.array([0.0]), periods_per_year=252).value
    down = deflated_sharpe(-returns, np.array([0.0]), periods_per_year=252).value
    assert up + down == pytest.approx(1.0, abs=1e-12)


def _trials_with_variance(n: int, variance: float) -> np.ndarray:
    if n == 1:
        return np.array([0.0])
    x = np.linspace(-1.0, 1.0, n)
    return x / np.std(x, ddof=1) * math.sqrt(variance)


@settings(max_examples=100, deadline=None)
@given(returns=return_series(), variance=st.sampled_from([1e-6, 1e-4, 1e-2]))
def test_more_trials_never_raise_the_deflated_sharpe(returns: np.ndarray, variance: float) -> None:
    counts = [1, 2, 3, 5, 10, 30, 100, 1_000, 10_000]
    results = [
        deflated_sharpe(returns, _trials_with_variance(n, variance), periods_per_year=252)
        for n in counts
    ]
    sr0 = [r.detail["sr0"] for r in results]
    assert all(a < b for a, b in itertools.pairwise(sr0)), sr0
    values = [r.value for r in results]
    assert all(b <= a + 1e-15 for a, b in itertools.pairwise(values)), values


def test_the_papers_worked_example() -> None:
    """Bailey & López de Prado (2014), section 4: annualised SR 2.5 over T = 1250 daily
    returns, N = 100 trials whose annualised SRs have variance 1/2, skew -3, kurtosis 10:
    DSR = 0.9004 (SR0 about 1.79 annualised)."""
    days = 250
    sr0 = expected_max_sharpe(100, 0.5 / days)
    assert sr0 * math.sqrt(days) == pytest.approx(1.7894, abs=1e-4)
    dsr = probabilistic_sharpe(2.5 / math.sqrt(days), sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_expected_max_sharpe_is_the_mean_maximum_of_null_trials() -> None:
    """SR0 approximates E[max of N normal(0, V) estimates] from above, closer as N grows
    (about 2 % at N = 10, 1.3 % at 30, 0.8 % at 100, 0.4 % at 1000): check it by seeded
    Monte Carlo (its error here is ~0.1 %)."""
    rng = np.random.default_rng(15)
    for n, reps, within in ((10, 20_000, 0.03), (100, 20_000, 0.012), (1_000, 4_000, 0.007)):
        simulated = rng.normal(0.0, 0.1, (reps, n)).max(axis=1).mean()
        ratio = expected_max_sharpe(n, 0.01) / simulated
        assert 1.0 < ratio < 1.0 + within, (n, ratio)


def test_a_selected_sharpe_equal_to_sr0_is_a_coin_flip() -> None:
    rng = np.random.default_rng(3)
    returns = rng.normal(0.001, 0.01, 500)
    sr = np.mean(returns) / np.std(returns, ddof=1)
    # two trials [-a, a]: Var = 2a², SR0 = sqrt(2) a γ Φ⁻¹(1 - 1/(2e)) (Φ⁻¹(1/2) = 0)
    a = sr / (math.sqrt(2) * np.euler_gamma * stats.norm.ppf(1 - 1 / (2 * np.e)))
    got = deflated_sharpe(returns, np.array([-a, a]), periods_per_year=252)
    assert got.detail["sr0"] == pytest.approx(sr, rel=1e-12)
    assert got.value == pytest.approx(0.5, abs=1e-12)


def test_threshold_sets_passed() -> None:
    rng = np.random.default_rng(4)
    returns = rng.normal(0.002, 0.01, 1_000)
    trials = rng.normal(0.0, 0.03, 200)
    value = deflated_sharpe(returns, trials, periods_per_year=252).value
    assert deflated_sharpe(returns, trials, periods_per_year=252, threshold=value).passed is True
    above = min(1.0, value + 1e-6)
    assert deflated_sharpe(returns, trials, periods_per_year=252, threshold=above).passed is False


@pytest.mark.parametrize(
    ("returns", "trials", "kwargs", "match"),
    [
        ([0.01, np.nan, 0.02], [0.1], {}, "returns has 1 NaN/inf"),
        ([0.01, np.inf, 0.02], [0.1], {}, "returns has 1 NaN/inf"),
        ([0.01, 0.02, 0.03], [0.1, np.nan], {}, "trial_sharpes has 1 NaN/inf"),
        ([0.01], [0.1], {}, "at least 2 values"),
        ([0.01, 0.02], [], {}, "trial_sharpes is empty"),
        ([0.1, 0.1, 0.1], [0.1, 0.2], {}, "zero variance"),
        ([0.0, 0.0], [0.1, 0.2], {}, "zero variance"),
        ([[0.01, 0.02]], [0.1], {}, "returns must be a 1-D"),
        ([0.01, 0.02], [0.1], {"periods_per_year": 0}, "periods_per_year must be a number > 0"),
        ([0.01, 0.02], [0.1], {"periods_per_year": math.inf}, "periods_per_year must be finite"),
        ([0.01, 0.02], [0.1], {"threshold": 1.5}, "threshold must be a probability"),
    ],
)
def test_deflated_sharpe_refuses_bad_input(
    returns: list[float], trials: list[float], kwargs: dict[str, float], match: str
) -> None:
    kwargs = {"periods_per_year": 252, **kwargs}
    with pytest.raises(GuardInputError, match=match):
        deflated_sharpe(np.array(returns), np.array(trials), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# probability of backtest overfitting (CSCV)
# ---------------------------------------------------------------------------------------


@st.composite
def perf_matrices(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    n_splits = draw(st.sampled_from([2, 4, 6, 8]))
    block = draw(st.integers(1 if n_splits >= 4 else 2, 25))
    n_rows = n_splits * block + draw(st.integers(0, n_splits - 1))
    n_trials = draw(st.integers(2, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    drifts = rng.normal(0.0, draw(st.sampled_from([0.0, 0.1, 0.5])), n_trials)
    perf = rng.normal(drifts, 1.0, (n_rows, n_trials)) * draw(st.sampled_from([1e-3, 1.0]))
    if draw(st.booleans()) and n_trials > 2:  # identical trials: ties in and out of sample
        perf[:, 1] = perf[:, 0]
    if draw(st.booleans()):  # a trial out of the market in some blocks (flat halves)
        j = n_trials - 1
        quiet = rng.random(n_splits) < 0.6
        quiet[rng.integers(n_splits)] = False  # never flat over every row
        start = n_rows - block * n_splits
        for i in np.flatnonzero(quiet):
            perf[start + i * block : start + (i + 1) * block, j] = 0.0
        perf[:start, j] = rng.normal(size=start)
    return perf, n_splits


@settings(max_examples=200, deadline=None)
@given(case=perf_matrices())
def test_pbo_matches_the_plain_loop(case: tuple[np.ndarray, int]) -> None:
    perf, n_splits = case
    want_pbo, want_logits = reference_pbo(perf, n_splits)
    got = pbo_cscv(perf, n_splits=n_splits)
    assert isinstance(got, PboResult)
    assert got.n_combinations == math.comb(n_splits, n_splits // 2) == len(got.logits)
    np.testing.assert_allclose(got.logits, want_logits, rtol=1e-12, atol=1e-12)
    assert got.pbo == want_pbo
    assert got.detail["rows_dropped"] == perf.shape[0] % n_splits
    assert got.passed is None and got.detail["passed"] is None


def test_pbo_in_several_chunks_matches_the_plain_loop() -> None:
    """Enough trials that the combinations are processed in more than one chunk."""
    n_trials = 1_000
    assert math.comb(8, 4) > guards._CHUNK_CELLS // n_trials  # more than one chunk
    rng = np.random.default_rng(8)
    perf = rng.normal(rng.normal(0, 0.2, n_trials), 1.0, (8 * 6 + 3, n_trials))
    want_pbo, want_logits = reference_pbo(perf, 8)
    got = pbo_cscv(perf, n_splits=8)
    np.testing.assert_allclose(got.logits, want_logits, rtol=1e-12, atol=1e-12)
    assert got.pbo == want_pbo


def test_pure_noise_overfits_half_the_time() -> None:
    """With N even and every trial noise, the in-sample best lands in the lower half out of
    sample with probability 1/2; averaged over 40 seeded studies (sd of the mean ~0.03)."""
    pbos = [
        pbo_cscv(np.random.default_rng(seed).normal(0.0, 0.01, (480, 10)), n_splits=8).pbo
        for seed in range(40)
    ]
    assert 0.38 <= float(np.mean(pbos)) <= 0.62, pbos


def test_one_truly_better_trial_is_not_overfit() -> None:
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        perf = rng.normal(0.0, 1.0, (800, 20))
        perf[:, 7] += 0.3  # a real edge of 0.3 sd per period
        got = pbo_cscv(perf, n_splits=16, threshold=0.05)
        assert got.pbo <= 0.01, (seed, got.pbo)
        assert got.passed is True and got.detail["passed"] is True
        assert got.detail["prob_oos_loss"] <= 0.01


def test_threshold_on_noise_fails() -> None:
    perf = np.random.default_rng(9).normal(0.0, 1.0, (480, 10))
    got = pbo_cscv(perf, n_splits=8, threshold=0.05)
    assert got.pbo > 0.05
    assert got.passed is False and got.detail["passed"] is False


def test_default_split_shape() -> None:
    got = pbo_cscv(np.random.default_rng(1).normal(size=(2_000, 200)))
    assert got.n_combinations == 12_870 == len(got.logits)
    assert got.detail["n_splits"] == 16 and got.detail["block_rows"] == 125


def _noise(rows: int, cols: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(rows, cols))


def _with(value: float, at: tuple[int, int]) -> np.ndarray:
    m = _noise(40, 4)
    m[at] = value
    return m


def _flat_column() -> np.ndarray:
    m = _noise(40, 4)
    m[:, 2] = 0.0
    return m


@pytest.mark.parametrize(
    ("perf", "kwargs", "match"),
    [
        (_noise(40, 1), {}, "at least 2 trials"),
        (_noise(40, 4), {"n_splits": 5}, "n_splits must be an even integer"),
        (_noise(40, 4), {"n_splits": 0}, "n_splits must be an even integer"),
        (_noise(40, 4), {"n_splits": 4.0}, "n_splits must be an even integer"),
        (_noise(15, 4), {"n_splits": 16}, "too few for n_splits=16"),
        (_noise(3, 4), {"n_splits": 2}, "too few for n_splits=2"),
        (_with(np.nan, (5, 1)), {}, "first at row 5, trial 1"),
        (_with(-np.inf, (7, 3)), {}, "first at row 7, trial 3"),
        (_flat_column(), {}, r"trial column\(s\) \[2\] have zero variance"),
        (np.zeros(40), {}, "2-D T x N matrix"),
        (_noise(40, 4), {"threshold": -0.1}, "threshold must be a probability"),
    ],
)
def test_pbo_refuses_bad_input(perf: np.ndarray, kwargs: dict[str, object], match: str) -> None:
    kwargs = {"n_splits": 4, **kwargs}
    with pytest.raises(GuardInputError, match=match):
        pbo_cscv(perf, **kwargs)  # type: ignore[arg-type]
