"""Research: history through the live code (event mode) and Numba loops that agree with it
(fast mode). See docs/BACKTEST.md."""
