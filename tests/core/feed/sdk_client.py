"""Run the real smartapi-python ``SmartWebSocketV2`` against our simulator (test helper).

Usage: ``python sdk_client.py CONFIG_JSON`` where CONFIG_JSON is
``{"timeout_s": 20, "connections": [{"url": ..., "subscriptions": [[mode, exchange_type,
[tokens...]], ...], "expect": {"MODE": count, ...}}, ...]}``.

Prints one JSON line per ``on_data`` call: ``{"conn": i, "data": <the SDK's dict>}``;
then exits by itself with ``os._exit`` — 0 once every connection has its expected
count per mode, 3 on timeout. The SDK's own close would reconnect (its ``_on_close`` has
the wrong arity), so we never call it.

Run it with cwd in a scratch directory (the SDK writes ./logs) and with HTTP(S)_PROXY
pointing at a refused loopback port plus NO_PROXY=127.0.0.1,localhost: importing the SDK
calls https://api.ipify.org with no timeout, and the proxy makes that fail fast offline.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from typing import Any

from SmartApi.smartWebSocketV2 import SmartWebSocketV2


def main(config: dict[str, Any]) -> None:
    lock = threading.Lock()
    done = threading.Event()
    counts = [Counter() for _ in config["connections"]]
    expected = [
        {int(mode): n for mode, n in conn["expect"].items()} for conn in config["connections"]
    ]

    def satisfied() -> bool:
        return all(
            all(count[mode] >= n for mode, n in want.items())
            for count, want in zip(counts, expected, strict=True)
        )

    def run(index: int, conn: dict[str, Any]) -> None:
        # Fake credentials: the SDK only checks they are non-empty.
        sws = SmartWebSocketV2(
            "Bearer FAKE.JWT.TOKEN", "fake_api_key", f"SDK{index}", "fake_feed_token",
            max_retry_attempt=0, retry_delay=0,
        )  # fmt: skip
        sws.ROOT_URI = conn["url"]

        def on_open(_ws: Any) -> None:
            for mode, exchange_type, tokens in conn["subscriptions"]:
                sws.subscribe(f"sdk{index}m{mode}", mode, [
                    {"exchangeType": exchange_type, "tokens": list(tokens)}
                ])  # fmt: skip

        def on_data(_ws: Any, message: dict[str, Any]) -> None:
            with lock:
                if done.is_set():
                    return
                sys.stdout.write(json.dumps({"conn": index, "data": message}) + "\n")
                counts[index][message.get("subscription_mode")] += 1
                if satisfied():
                    done.set()

        def on_error(*args: Any) -> None:
            sys.stderr.write(f"sdk on_error conn={index}: {args!r}\n")

        sws.on_open = on_open
        sws.on_data = on_data
        sws.on_error = on_error
        sws.connect()

    for index, conn in enumerate(config["connections"]):
        threading.Thread(target=run, args=(index, conn), daemon=True).start()
    finished = done.wait(config["timeout_s"])
    with lock:
        sys.stdout.flush()
        sys.stderr.write(f"sdk counts: {[dict(c) for c in counts]}\n")
        sys.stderr.flush()
        os._exit(0 if finished else 3)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
