"""Shadow candidates: which genomes trade beside the active one, and the config each runs.

A candidate is named on the command line or in ``[shadow] candidates`` as

- ``FAMILY@VERSION`` — a version in the primary's genome store (``chimera genome history``);
- ``vN`` — the same for family ``default``;
- a TOML file with a ``[genome]`` table of gene values (and optional ``name``/``family``).

The active genome always runs too, as the candidate ``active``: the reference the gates
measure the others against, and the proof that the shadow reproduces the primary.

A candidate's genes go into its config's ``[strategy]`` (version 0 of its own, empty,
genome store), so its recorded session replays with ``chimera replay`` like the primary's:
the session's config alone says what the candidate ran.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from chimera_core.config import Config
from chimera_core.errors import ConfigError
from chimera_governance.genome import (
    DEFAULT_FAMILY,
    DEFAULT_GENES,
    GenomeError,
    GenomeView,
    genes_from_strategy,
)

ACTIVE = "active"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_VERSION = re.compile(r"^(?:(?P<family>[A-Za-z0-9_-]+)@)?v?(?P<version>[0-9]+)$")
GENE_NAMES = tuple(g.name for g in DEFAULT_GENES)


class CandidateError(ConfigError):
    """A candidate that cannot be resolved (unknown version, bad file, bad gene)."""


@dataclass(frozen=True)
class Candidate:
    name: str  # directory and telemetry-topic safe
    family: str
    params: dict[str, float]
    source: str  # what was named: "default@3", "path/to/cand.toml", "active"


def genome_db(cfg: Config) -> Path:
    """The primary's genome store (its mode's state directory)."""
    return Path(cfg.data_dir) / cfg.mode / "genome.db"


def active_params(cfg: Config, family: str = DEFAULT_FAMILY) -> dict[str, float]:
    """The genes in force for ``family`` in the primary: its store's latest version, or the
    configured ``[strategy]`` while the store has none."""
    defaults = {g.name: float(g.default) for g in genes_from_strategy(cfg.strategy)}
    path = genome_db(cfg)
    if not path.is_file():
        return defaults
    with GenomeView(path, genes=genes_from_strategy(cfg.strategy), empty_ok=True) as view:
        out = view.current(family)
    return dict(out.params) if out.version else defaults


def resolve(spec: str, cfg: Config) -> Candidate:
    """One named candidate (see the module docstring)."""
    spec = spec.strip()
    if spec == ACTIVE:
        return Candidate(ACTIVE, DEFAULT_FAMILY, active_params(cfg), ACTIVE)
    m = _VERSION.match(spec)
    if m and not spec.endswith(".toml"):
        family, version = m.group("family") or DEFAULT_FAMILY, int(m.group("version"))
        path = genome_db(cfg)
        if not path.is_file():
            raise CandidateError(
                f"shadow candidate {spec!r}: no genome store at {path} to take version "
                f"{version} from (name a TOML file with a [genome] table instead)"
            )
        try:
            with GenomeView(path) as view:
                row = view.version(family, version)
        except GenomeError as exc:
            raise CandidateError(f"shadow candidate {spec!r}: {exc}") from None
        return _checked(Candidate(f"{family}-v{version}", family, dict(row.params), spec))
    path = Path(spec)
    if not path.is_file():
        raise CandidateError(
            f"shadow candidate {spec!r}: expected FAMILY@VERSION, vN or an existing TOML file"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CandidateError(f"shadow candidate {spec}: cannot read it as TOML ({exc})") from None
    unknown = sorted(set(raw) - {"name", "family", "genome"})
    if unknown:
        raise CandidateError(
            f"shadow candidate {spec}: unknown keys {unknown} (allowed: name, family, [genome])"
        )
    genome = raw.get("genome")
    if not isinstance(genome, dict) or not genome:
        raise CandidateError(f"shadow candidate {spec}: needs a [genome] table of gene values")
    name = str(raw.get("name", path.stem))
    family = str(raw.get("family", DEFAULT_FAMILY))
    params = dict(active_params(cfg, family))
    for gene, value in genome.items():
        if gene not in GENE_NAMES:
            raise CandidateError(
                f"shadow candidate {spec}: [genome] {gene!r} is not a gene (genes: "
                + ", ".join(GENE_NAMES)
                + ")"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CandidateError(
                f"shadow candidate {spec}: [genome] {gene} = {value!r} must be a number"
            )
        params[gene] = float(value)
    return _checked(Candidate(name, family, params, spec))


def _checked(c: Candidate) -> Candidate:
    if not _NAME.match(c.name) or c.name == ACTIVE:
        raise CandidateError(
            f"shadow candidate name {c.name!r}: 1-40 letters, digits, '_' or '-', not "
            f"{ACTIVE!r} (the active genome's)"
        )
    for g in DEFAULT_GENES:
        v = c.params.get(g.name)
        if v is None or not (g.lo <= v <= g.hi):
            raise CandidateError(
                f"shadow candidate {c.name}: gene {g.name} = {v} outside [{g.lo}, {g.hi}]"
            )
    return c


def resolve_all(specs: list[str], cfg: Config) -> list[Candidate]:
    """``active`` first, then every named candidate once (names must differ)."""
    out = [resolve(ACTIVE, cfg)]
    for spec in specs:
        c = resolve(spec, cfg)
        if any(o.name == c.name for o in out):
            raise CandidateError(f"shadow candidate {c.name!r} is named twice ({spec})")
        out.append(c)
    return out


def candidate_config(primary: Config, candidate: Candidate, shadow_dir: Path) -> Config:
    """The primary's config on paper, its strategy on the candidate's genes, its journal,
    governance state and black box under ``shadow_dir/<name>``."""
    fields = {
        name: (round(v) if isinstance(getattr(primary.strategy, name), int) else v)
        for name, v in candidate.params.items()
        if hasattr(primary.strategy, name)
    }
    raw = msgspec.to_builtins(primary)
    raw["strategy"] = {**raw["strategy"], **fields}
    raw["mode"] = "paper"
    raw["data_dir"] = str(shadow_dir / candidate.name)
    raw["execution"] = {**raw["execution"], "enabled": True, "broker": "paper"}
    raw["telemetry"] = {**raw["telemetry"], "wait_for_subscriber_s": 0.0}
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise CandidateError(f"shadow candidate {candidate.name}: {exc}") from None
