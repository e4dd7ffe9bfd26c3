"""`chimera service`: unit rendering, systemd-analyze verify, install/uninstall round trip."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tools import service
from tools.service import UNITS, ServiceError, main, render_units

# The trading target's long-running services; the nightly research is a oneshot its timer
# starts, checked on its own below.
RESEARCH = ("chimera-research.service", "chimera-research.timer")
OPTIONAL = (*RESEARCH, "chimera-bot.service")  # enabled on their own, never by the target
SERVICES = [u for u in UNITS if u.endswith(".service") and u not in OPTIONAL]
HARDENING = [
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "ProtectHome=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "ProtectKernelTunables=yes",
    "ProtectControlGroups=yes",
    "LockPersonality=yes",
    "Restart=on-failure",
]


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "chimera"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    config = tmp_path / "srv" / "chimera.toml"
    config.parent.mkdir()
    config.write_text("")
    data = tmp_path / "srv" / "data"
    data.mkdir()
    return {
        "venv": venv,
        "config": config,
        "data": data,
        "prefix": tmp_path / "units",
        "env": tmp_path / "etc" / "chimera" / "chimera.env",
    }


@pytest.fixture(autouse=True)
def no_systemctl(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tmp prefix must never make systemctl change anything; queries get fake answers."""

    def fake(*args: str) -> subprocess.CompletedProcess[str]:
        if args[0] == "is-system-running":
            return subprocess.CompletedProcess(args, 0, "running\n", "")
        if args[0] == "is-active":
            return subprocess.CompletedProcess(args, 3, "inactive\n", "")
        raise AssertionError(f"systemctl called: {args}")

    monkeypatch.setattr(service, "_systemctl", fake)


def _install_args(lay: dict[str, Path], *extra: str) -> list[str]:
    return [
        "install",
        "--prefix",
        str(lay["prefix"]),
        "--venv",
        str(lay["venv"]),
        "--config",
        str(lay["config"]),
        "--data-dir",
        str(lay["data"]),
        "--env-file",
        str(lay["env"]),
        *extra,
    ]


def _render(lay: dict[str, Path], user: str = "chimera") -> dict[str, str]:
    return render_units(
        venv=lay["venv"], config=lay["config"], data_dir=lay["data"], user=user, env_file=lay["env"]
    )


def _directives(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith(("#", "["))]


def test_rendered_units_carry_hardening_and_wiring(layout: dict[str, Path]) -> None:
    units = _render(layout)
    assert set(units) == set(UNITS)
    for name in SERVICES:
        text = units[name]
        lines = _directives(text)
        assert "@" not in text
        for directive in HARDENING:
            assert directive in lines, (name, directive)
        assert [ln for ln in lines if ln.startswith("ReadWritePaths=")] == [
            f"ReadWritePaths={layout['data']}"
        ]
        assert f"WorkingDirectory={layout['data'].parent}" in lines
        assert f"EnvironmentFile={layout['env']}" in lines
        assert "User=chimera" in lines
        assert any(ln.startswith("RestartSec=") for ln in lines)
        assert any(ln.startswith("StartLimitIntervalSec=") for ln in lines)
        assert any(ln.startswith("StartLimitBurst=") for ln in lines)
        assert "WantedBy=chimera.target" in lines
        # StartLimit* belong in [Unit] (ignored with a warning in [Service]).
        unit_section = text.split("[Service]")[0]
        assert "StartLimitBurst=" in unit_section
        assert "MemoryDenyWriteExecute" not in lines  # Numba JIT needs W+X pages
    live = _directives(units["chimera-live.service"])
    cmd = f"ExecStart={layout['venv']}/bin/chimera live --config {layout['config']}"
    assert cmd in live
    for d in (
        "Type=notify",
        "NotifyAccess=main",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "MemoryMax=2G",
        "Wants=network-online.target chimera-record.service",
        "After=network-online.target chimera-record.service",
    ):
        assert d in live, d
    record = _directives(units["chimera-record.service"])
    assert f"ExecStart={layout['venv']}/bin/chimera record --config {layout['config']}" in record
    assert "Before=chimera-live.service" in record
    assert "MemoryMax=1G" in record
    shadow = _directives(units["chimera-shadow.service"])
    cmd = f"ExecStart={layout['venv']}/bin/chimera shadow run --config {layout['config']}"
    assert cmd in shadow
    assert "Before=chimera-live.service" in shadow  # candidates see the session's first tick
    cortex = _directives(units["chimera-cortex.service"])
    assert f"ExecStart={layout['venv']}/bin/chimera cortex --config {layout['config']}" in cortex
    assert "MemoryMax=1G" in cortex
    notify = _directives(units["chimera-notify.service"])
    assert f"ExecStart={layout['venv']}/bin/chimera notify --config {layout['config']}" in notify
    assert "After=network-online.target" in notify and "MemoryMax=512M" in notify
    target = _directives(units["chimera.target"])
    assert "WantedBy=multi-user.target" in target
    wants = next(ln for ln in target if ln.startswith("Wants="))
    for name in SERVICES:
        assert name in wants
    assert not any(u in wants for u in OPTIONAL)  # research and the bot: enabled apart
    bot = _directives(units["chimera-bot.service"])
    for directive in HARDENING:
        assert directive in bot, directive
    assert f"ExecStart={layout['venv']}/bin/chimera bot --config {layout['config']}" in bot
    assert "WantedBy=multi-user.target" in bot
    research = _directives(units["chimera-research.service"])
    for directive in HARDENING:
        if not directive.startswith("Restart"):  # a oneshot: the timer runs it again
            assert directive in research, directive
    assert "Type=oneshot" in research and "Nice=19" in research
    assert f"ReadWritePaths={layout['data']}" in research
    assert (
        f"ExecStart={layout['venv']}/bin/chimera research nightly --config {layout['config']}"
        in research
    )
    timer = _directives(units["chimera-research.timer"])
    assert "Unit=chimera-research.service" in timer and "Persistent=true" in timer
    assert "WantedBy=timers.target" in timer
    assert any(ln.startswith("OnCalendar=") for ln in timer)


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    return subprocess.run(
        [exe, "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not Path("/usr/bin/systemd-analyze").exists(),
    reason="systemd-analyze not installed",
)
def test_systemd_analyze_verify(layout: dict[str, Path]) -> None:
    assert main(_install_args(layout)) == 0
    paths = [layout["prefix"] / u for u in UNITS]
    proc = _verify(paths)
    # verify exits 0 on unknown keys / bad values (it only warns), so also require that
    # nothing it printed is about our units.
    ours = [
        ln
        for ln in (proc.stdout + proc.stderr).splitlines()
        if any(u.split(".")[0] in ln for u in UNITS) or str(layout["prefix"]) in ln
    ]
    assert proc.returncode == 0, proc.stderr
    assert ours == [], ours

    # And the check has teeth: a typo'd key is reported, a missing binary fails.
    bad = layout["prefix"].parent / "bad"
    bad.mkdir()
    text = (layout["prefix"] / "chimera-live.service").read_text()
    (bad / "chimera-live.service").write_text(text.replace("PrivateTmp=", "PrivateTmpp="))
    proc = _verify([bad / "chimera-live.service"])
    assert "PrivateTmpp" in proc.stderr
    (bad / "chimera-record.service").write_text(
        (layout["prefix"] / "chimera-record.service").read_text().replace("/venv/", "/nope/")
    )
    assert _verify([bad / "chimera-record.service"]).returncode != 0


def test_install_uninstall_round_trip(
    layout: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = layout["prefix"]
    prefix.mkdir()
    foreign = prefix / "other.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")

    assert main(_install_args(layout)) == 0
    expected = _render(layout)
    for name, text in expected.items():
        assert (prefix / name).read_text() == text
    env = layout["env"]
    assert env.read_bytes() == b""
    assert stat.S_IMODE(env.stat().st_mode) == 0o600

    # Secrets written by the operator survive a re-install untouched.
    env.write_text("CHIMERA_API_KEY=secret\n")
    assert main(_install_args(layout, "--user", "trader")) == 0
    assert env.read_text() == "CHIMERA_API_KEY=secret\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert "User=trader" in (prefix / "chimera-live.service").read_text()

    capsys.readouterr()
    assert main(["status", "--prefix", str(prefix)]) == 0
    out = capsys.readouterr().out
    for name in UNITS:
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        assert "installed" in line and line.endswith("inactive")
    assert "missing" not in out

    assert main(["uninstall", "--prefix", str(prefix)]) == 0
    assert sorted(p.name for p in prefix.iterdir()) == ["other.service"]
    assert foreign.read_text() == "[Service]\nExecStart=/bin/true\n"
    assert env.read_text() == "CHIMERA_API_KEY=secret\n"  # secrets are not ours to delete
    assert main(["status", "--prefix", str(prefix)]) == 0
    assert capsys.readouterr().out.count("missing") == len(UNITS)


def test_foreign_unit_with_our_name_is_not_overwritten_or_removed(
    layout: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = layout["prefix"]
    prefix.mkdir()
    theirs = prefix / "chimera-live.service"
    theirs.write_text("[Service]\nExecStart=/bin/true\n")
    assert main(_install_args(layout)) == 2
    assert "not written by chimera" in capsys.readouterr().err
    assert main(["uninstall", "--prefix", str(prefix)]) == 0
    assert theirs.read_text() == "[Service]\nExecStart=/bin/true\n"


def test_dry_run_writes_nothing(
    layout: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_install_args(layout, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert not layout["prefix"].exists()
    assert not layout["env"].exists()
    assert "ProtectSystem=strict" in out
    assert f"### {layout['prefix'] / 'chimera.target'}" in out


@pytest.mark.parametrize("flag", ["--prefix", "--venv", "--config", "--data-dir", "--env-file"])
def test_relative_paths_rejected(
    layout: dict[str, Path], capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    args = _install_args(layout)
    args[args.index(flag) + 1] = "relative/path"
    assert main(args) == 2
    assert "must be an absolute path" in capsys.readouterr().err
    assert not layout["prefix"].exists()


def test_render_rejects_bad_input(layout: dict[str, Path]) -> None:
    with pytest.raises(ServiceError, match="absolute"):
        render_units(venv="venv", config=layout["config"], data_dir=layout["data"])
    with pytest.raises(ServiceError, match="interpret"):
        render_units(venv="/opt/my venv", config=layout["config"], data_dir=layout["data"])
    with pytest.raises(ServiceError, match="user"):
        _render(layout, user="root; rm -rf /")


def test_permission_denied_says_sudo(
    layout: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(service.os, "replace", denied)
    assert main(_install_args(layout)) == 1
    err = capsys.readouterr().err
    assert "permission denied" in err and "run with sudo" in err


def test_install_says_when_the_config_data_dir_differs(
    layout: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A relative data_dir resolves differently for the services (WorkingDirectory) and for
    an operator's `chimera doctor`/`kill` run elsewhere; install says what to write."""
    layout["config"].write_text('data_dir = "data"\n')
    assert main(_install_args(layout)) == 0
    out = capsys.readouterr().out
    assert f'set data_dir = "{layout["data"]}"' in out
    layout["config"].write_text(f'data_dir = "{layout["data"]}"\n')
    assert main(_install_args(layout)) == 0
    assert "data_dir" not in capsys.readouterr().out
