"""``chimera stress``: Monte Carlo on a backtest's returns and trades, and scenario runs
through event mode (docs/STRESS.md)."""
