"""Config values that used to pass validation and crash later (inf, nan, huge ints, bad
ports, too many tokens, bad bytes, a data_dir that is a file) are refused at load time,
naming the key and what is allowed — and before anything is written."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.config import Config, load_config, parse_config
from chimera_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _unwrap(tp: Any) -> tuple[Any, list[msgspec.Meta]]:
    metas: list[msgspec.Meta] = []
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp = args[0]
        metas += [m for m in args[1:] if isinstance(m, msgspec.Meta)]
    return tp, metas


Field = tuple[tuple[str, ...], Any]


def fields(struct: type = Config, prefix: tuple[str, ...] = ()) -> list[Field]:
    """Every leaf field of the config Structs: (path, annotated type)."""
    out: list[Field] = []
    for name, tp in typing.get_type_hints(struct, include_extras=True).items():
        base, _ = _unwrap(tp)
        if isinstance(base, type) and issubclass(base, msgspec.Struct):
            out += fields(base, (*prefix, name))
        else:
            out.append(((*prefix, name), tp))
    return out


def of_type(kind: type) -> list[Field]:
    return [(p, tp) for p, tp in fields() if _unwrap(tp)[0] is kind]


FLOATS = of_type(float)
INTS = of_type(int)


def toml_for(path: tuple[str, ...], value: str) -> str:
    section, key = path[:-1], path[-1]
    head = f"[{'.'.join(section)}]\n" if section else ""
    return f"{head}{key} = {value}\n"


def test_the_walk_finds_the_fields_this_issue_is_about():
    names = {".".join(p) for p, _ in FLOATS + INTS}
    for key in ("strategy.band_k", "feed.stale_after_s", "strategy.execute_timeout_s",
                "feed.ping_interval_s", "governance.equity", "strategy.bar_interval_s",
                "strategy.order_qty", "execution.paper.starting_cash"):  # fmt: skip
        assert key in names


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(FLOATS), value=st.sampled_from(["inf", "-inf", "nan", "+inf"]))
def test_every_float_refuses_inf_and_nan_naming_the_key(field, value):
    path, _ = field
    key = ".".join(path)
    with pytest.raises(ConfigError) as err:
        parse_config(toml_for(path, value), "chimera.toml")
    message = str(err.value)
    assert f"'{key}'" in message, message
    assert "finite" in message, message


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(INTS))
def test_every_int_has_an_upper_bound(field):
    path, tp = field
    key = ".".join(path)
    _, metas = _unwrap(tp)
    assert any(m.le is not None or m.lt is not None for m in metas), f"{key} has no upper bound"
    with pytest.raises(ConfigError) as err:
        parse_config(toml_for(path, str(2**63 - 1)), "chimera.toml")
    assert f"'{key}'" in str(err.value) and "<=" in str(err.value), str(err.value)


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(FLOATS))
def test_every_float_has_an_upper_bound(field):
    path, tp = field
    key = ".".join(path)
    _, metas = _unwrap(tp)
    assert any(m.le is not None or m.lt is not None for m in metas), f"{key} has no upper bound"
    with pytest.raises(ConfigError) as err:
        parse_config(toml_for(path, "1e300"), "chimera.toml")
    # The message names the bound: "<= X" (inclusive) or "< X" (exclusive).
    assert f"'{key}'" in str(err.value) and "<" in str(err.value), str(err.value)


def test_the_defaults_sit_inside_every_bound():
    cfg = Config()
    for path, tp in FLOATS + INTS:
        value: Any = cfg
        for part in path:
            value = getattr(value, part)
        for m in _unwrap(tp)[1]:
            assert m.le is None or value <= m.le, path
            assert m.ge is None or value >= m.ge, path
        if isinstance(value, float):
            assert math.isfinite(value)


def test_at_most_1000_tokens_per_connection():
    tokens = [str(i) for i in range(1, 1002)]
    with pytest.raises(ConfigError) as err:
        parse_config(f"[feed]\ntokens = {tokens}\n".replace("'", '"'), "chimera.toml")
    assert "'feed.tokens'" in str(err.value) and "1000" in str(err.value)
    parse_config(f"[feed]\ntokens = {tokens[:1000]}\n".replace("'", '"'))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[feed]\nurl = "ws://127.0.0.1:70000/smart-stream"', "feed.url"),
        ('[feed]\nurl = "ws://127.0.0.1:0/smart-stream"', "feed.url"),
        ('[feed]\nurl = "ws://127.0.0.1:-1/smart-stream"', "feed.url"),
        ('[feed]\nurl = "ws:///smart-stream"', "feed.url"),
        ('[telemetry]\nendpoint = "tcp://127.0.0.1:65536"', "telemetry.endpoint"),
        ('[telemetry]\nendpoint = "tcp://127.0.0.1:0"', "telemetry.endpoint"),
        ('[control]\nendpoint = "tcp://127.0.0.1:99999"', "control.endpoint"),
        ('[execution.angelone]\nrest_url = "http://127.0.0.1:65536"',
         "execution.angelone.rest_url"),
        ('[execution.angelone]\nrest_url = "ftp://127.0.0.1:21"', "execution.angelone.rest_url"),
        ('[execution.angelone]\norder_ws_url = "wss://x.in:123456/u"',
         "execution.angelone.order_ws_url"),
    ],
)  # fmt: skip
def test_ports_outside_1_to_65535_are_refused(text, key):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "chimera.toml")
    assert f"'{key}'" in str(err.value), str(err.value)


def test_invalid_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "chimera.toml"
    path.write_bytes(b'mode = "paper"\n# caf\xe9\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "UTF-8" in str(err.value)


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    for data_dir in (tmp_path / "afile", tmp_path / "afile" / "below"):
        with pytest.raises(ConfigError) as err:
            parse_config(f'data_dir = "{data_dir}"\n', "chimera.toml")
        assert "'data_dir'" in str(err.value) and "not a directory" in str(err.value)
    with pytest.raises(ConfigError, match="'data_dir'"):
        parse_config('data_dir = ""\n', "chimera.toml")


# ---- the example documents every key --------------------------------------------------
def _table_of_tables(tp: Any) -> bool:
    """A ``dict[str, SomeStruct]`` field: tables by name ([notify.channels.NAME])."""
    base, _ = _unwrap(tp)
    args = typing.get_args(base)
    return (
        typing.get_origin(base) is dict
        and len(args) == 2
        and isinstance(args[1], type)
        and issubclass(args[1], msgspec.Struct)
    )


def test_every_config_field_is_in_the_example():
    text = (ROOT / "chimera.example.toml").read_text(encoding="utf-8")
    example = tomllib.loads(text)
    missing = []
    for path, tp in fields():
        node: Any = example
        for part in path:
            if not isinstance(node, dict) or part not in node:
                # Tables by name may be shown as a commented-out example table instead
                # (its keys are checked by tests/tools/test_config_docs.py).
                shown = re.search(rf"^#\s*\[{re.escape('.'.join(path))}\.\w+\]", text, re.M)
                if not (_table_of_tables(tp) and shown):
                    missing.append(".".join(path))
                break
            node = node[part]
    assert missing == [], f"chimera.example.toml lacks {missing}"


# ---- end to end: chimera live refuses before writing anything ---------------------------
BAD = {
    "inf": b"[strategy]\nband_k = inf\n",
    "tokens": ("[feed]\ntokens = [" + ",".join(f'"{i}"' for i in range(1, 1002)) + "]\n").encode(),
    "port": b'[feed]\nurl = "ws://127.0.0.1:70000/smart-stream"\n',
    "int": f"[strategy]\nbar_interval_s = {2**63 - 1}\n".encode(),
    "utf8": b"[strategy]\nband_k = 2.0 # \xff\xfe\n",
}


@pytest.mark.parametrize("case", [*BAD, "data_dir_is_a_file"])
def test_chimera_live_refuses_a_bad_config_before_writing(tmp_path, case):
    data = tmp_path / "data"
    data.mkdir()
    if case == "data_dir_is_a_file":
        target = tmp_path / "datafile"
        target.write_text("not a dir")
        body = f'data_dir = "{target}"\n'.encode()
    else:
        body = f'data_dir = "{data}"\n'.encode() + BAD[case]
    config = tmp_path / "bad.toml"
    config.write_bytes(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_")}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "live", "--config", str(config),
         "--env-file", str(tmp_path / ".env")],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"chimera live: {config}" in proc.stderr, proc.stderr
    assert list(data.iterdir()) == []  # no token, no databases, no directories
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["data", "bad.toml", *(["datafile"] if case == "data_dir_is_a_file" else [])]
    )
