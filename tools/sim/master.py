"""A small Angel One instrument master for the simulator, in OpenAPIScripMaster.json's shape.

The real file (https://margincalculator.angelbroking.com/OpenAPI_File/files/
OpenAPIScripMaster.json) is a JSON list of objects whose values are all strings:
``token, symbol, name, expiry ("26DEC2024" or ""), strike, lotsize, instrumenttype,
exch_seg, tick_size``. ``strike`` and ``tick_size`` are in paise (x100; a CDS option's
strike x10^7); ``strike`` is "-1.000000" where there is none. The simulator serves this on
its REST port at ``MASTER_PATH`` (no auth, like the real one), so download -> cache ->
resolve is tested end to end.
"""

from __future__ import annotations

MASTER_PATH = "/OpenAPI_File/files/OpenAPIScripMaster.json"


def _row(
    token: str,
    symbol: str,
    name: str,
    exch: str,
    kind: str = "",
    expiry: str = "",
    strike: str = "-1.000000",
    lot: str = "1",
    tick: str = "5.000000",
) -> dict[str, str]:
    return {
        "token": token,
        "symbol": symbol,
        "name": name,
        "expiry": expiry,
        "strike": strike,
        "lotsize": lot,
        "instrumenttype": kind,
        "exch_seg": exch,
        "tick_size": tick,
    }


SAMPLE_MASTER: list[dict[str, str]] = [
    # NSE cash: the simulator's default tokens and a few more it knows prices for.
    _row("2885", "RELIANCE-EQ", "RELIANCE", "NSE", tick="10.000000"),
    _row("1594", "INFY-EQ", "INFY", "NSE"),
    _row("3045", "SBIN-EQ", "SBIN", "NSE"),
    _row("11536", "TCS-EQ", "TCS", "NSE"),
    _row("1333", "HDFCBANK-EQ", "HDFCBANK", "NSE"),
    _row("1660", "ITC-EQ", "ITC", "NSE"),
    _row("99926000", "Nifty 50", "NIFTY", "NSE", "AMXIDX", tick="0.000000"),
    # NSE F&O: a NIFTY future and two options (lot 75, tick ₹0.05 / ₹0.10).
    _row(
        "35006",
        "NIFTY26DEC24FUT",
        "NIFTY",
        "NFO",
        "FUTIDX",
        "26DEC2024",
        lot="75",
        tick="10.000000",
    ),
    _row(
        "43650",
        "NIFTY26DEC2425000CE",
        "NIFTY",
        "NFO",
        "OPTIDX",
        "26DEC2024",
        "2500000.000000",
        "75",
    ),
    _row(
        "43651",
        "NIFTY26DEC2425000PE",
        "NIFTY",
        "NFO",
        "OPTIDX",
        "26DEC2024",
        "2500000.000000",
        "75",
    ),
    # Currency: a USDINR future and call (tick ₹0.0025 = 0.25 paise; strike x10^7).
    _row(
        "1158", "USDINR24DECFUT", "USDINR", "CDS", "FUTCUR", "27DEC2024", lot="1", tick="0.250000"
    ),
    _row(
        "11590",
        "USDINR24DEC84.5CE",
        "USDINR",
        "CDS",
        "OPTCUR",
        "27DEC2024",
        "845000000.000000",
        "1",
        "0.250000",
    ),
    # Commodity: a crude oil future (tick ₹1).
    _row(
        "430106",
        "CRUDEOIL19DEC24FUT",
        "CRUDEOIL",
        "MCX",
        "FUTCOM",
        "19DEC2024",
        lot="100",
        tick="100.000000",
    ),
]
