"""``chimera notify``: alerts from telemetry to any channel (apprise URLs), nothing lost.

- ``rules``: which telemetry means which alert (with the source table);
- ``policy``: per-name rate limit with summaries, per-channel filters and quiet hours;
- ``outbox``: the SQLite outbox (in order per channel, retried, published back);
- ``channels``: apprise URLs from the environment, known to the log redactor;
- ``service``: the process (SUB → rules → outbox → delivery → the ``alert`` topic);
- ``cli``: ``chimera notify [--config] [--env-file] [--outbox]``.
"""
