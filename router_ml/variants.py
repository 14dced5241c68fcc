"""Router variants side by side in production: several artifacts, a traffic split, hot swaps.

``router-ml serve`` routes every request with one of its *variants*: a named router artifact with a
weight. A plain ``--artifact DIR`` is one variant named ``default``; ``--variant NAME=PATH:WEIGHT``
(repeatable) or ``--variants FILE.toml`` give several, for an A/B test or a canary::

    # variants.toml - paths relative to this file; weights are relative (90 + 10: 90% and 10%)
    [variants.control]
    artifact = "models/router-v3"
    weight = 90

    [variants.canary]
    artifact = "models/router-v4"
    weight = 10

Assignment is a hash of the request: of the body's ``user`` field when the caller sends one (the
OpenAI end-user id: one user always meets the same variant) and of the request id otherwise, mapped
onto the cumulative weights. It is deterministic, needs no shared state between workers, and over
many requests the shares match the weights (the binomial spread: 0.3 points at 10,000 requests for a
90/10 split). Every decision-log line carries ``variant`` next to ``policy.artifact_sha256``, so the log
compares variants directly and feeds the off-policy estimators with the policy that acted.

Hot swap: :meth:`VariantClient.reload` re-reads the variants (the TOML file again; the same paths for
``--artifact``/``--variant``, whose directories may have been replaced by a new export) and loads
every artifact in a worker thread - verified like at start - while the event loop keeps serving with
the current ones; the new split then replaces the old in one assignment. A request already decided
finishes on the router that decided it; none waits and none is dropped. A failed load (a broken
artifact, a bad file) keeps the current variants and reports why. ``router-ml serve`` reloads on
SIGHUP and on ``POST /admin/reload`` (see :mod:`router_ml.serve`).

Under ``--workers N`` each worker records the variants it serves after every successful load or reload
(:attr:`VariantSource.served`, a file the supervisor names), and a worker started later - one restarted
after a crash - loads those instead of reading the variants file again: it serves what its siblings
serve, not an edit nobody reloaded, and a file left broken on disk cannot keep it from starting.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_ml._decide import decide
from router_ml._ids import request_id as new_request_id
from router_ml._stderr import say
from router_ml.client import AsyncRoutedClient, prepare_router
from router_ml.errors import RouterMLError
from router_ml.exploration import Exploration
from router_ml.providers import ProviderCatalog
from router_ml.router import Router

__all__ = ["SERVED_ENV", "Split", "Variant", "VariantClient", "VariantError", "VariantSource", "VariantSpec",
           "check_split", "load_split", "parse_variant", "read_variants_file"]

#: the environment variable through which ``router-ml serve --workers`` names :attr:`VariantSource.served`
SERVED_ENV = "ROUTER_ML_SERVED_VARIANTS"

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class VariantError(RouterMLError, ValueError):
    """A variant specification or variants file is malformed (the message names the flag, file or field)."""


@dataclass(frozen=True)
class VariantSpec:
    """What the serve config says about one variant: its name, its artifact (directory or URI), its weight."""

    name: str
    artifact: str
    weight: float


def _check_name(name: str, where: str) -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise VariantError(f"{where}: the variant name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def _check_weight(weight: Any, where: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
        raise VariantError(f"{where}: the weight must be a number >= 0, got {weight!r}")
    return float(weight)


def parse_variant(text: str) -> VariantSpec:
    """``NAME=PATH:WEIGHT`` (the ``--variant`` flag); PATH may itself hold ``:`` (``runs:/...`` URIs)."""
    where = f"--variant {text}"
    name, eq, rest = text.partition("=")
    path, colon, weight = rest.rpartition(":")
    if not eq or not colon or not path:
        raise VariantError(f"{where}: expected NAME=PATH:WEIGHT, e.g. --variant canary=models/v4:10")
    try:
        value = float(weight)
    except ValueError:
        raise VariantError(f"{where}: the weight {weight!r} after the last ':' is not a number") from None
    return VariantSpec(_check_name(name, where), path, _check_weight(value, where))


def read_variants_file(path: str | Path) -> list[VariantSpec]:
    """The ``[variants.NAME]`` tables (``artifact``, ``weight``) of a TOML file; relative artifact paths are
    relative to the file. Errors name the file and the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise VariantError(f"--variants {path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise VariantError(f"--variants {path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"variants"})
    tables = data.get("variants")
    if unknown or not isinstance(tables, dict) or not tables:
        raise VariantError(f"{path}: expected only [variants.NAME] tables (artifact = \"DIR\", weight = N), "
                           f"found {unknown or 'no variants'}")
    specs = []
    for name, table in tables.items():
        where = f"{path}: variants.{name}"
        if not isinstance(table, dict):
            raise VariantError(f"{where}: must be a table with artifact and weight")
        extra = sorted(set(table) - {"artifact", "weight"})
        if extra:
            raise VariantError(f"{where}: unknown key(s) {extra}; allowed: artifact, weight")
        artifact = table.get("artifact")
        if not isinstance(artifact, str) or not artifact:
            raise VariantError(f"{where}.artifact: missing; the artifact directory (or runs:/ models:/ URI)")
        if ":/" not in artifact and not Path(artifact).is_absolute():
            artifact = str(path.parent / artifact)
        specs.append(VariantSpec(_check_name(name, where), artifact, _check_weight(table.get("weight", 1), where)))
    return specs


def check_split(specs: list[VariantSpec], where: str) -> list[VariantSpec]:
    """Distinct names and a positive, finite total weight, or :class:`VariantError` naming ``where``."""
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise VariantError(f"{where}: variant name(s) {twice} given more than once")
    total = sum(s.weight for s in specs)
    if not specs or total <= 0:
        raise VariantError(f"{where}: the weights add up to 0; give at least one variant a weight > 0")
    if not math.isfinite(total):  # 1e308 + 1e308: every share would be 0 and one variant take all traffic
        raise VariantError(f"{where}: the weights add up to more than a float holds; give smaller weights (they are "
                           "relative: 90 and 10 split 90% / 10%)")
    return specs


class VariantSource:
    """Where the variants come from, read again on every reload: a fixed list of specs (``--artifact`` or
    ``--variant``, whose artifacts are reloaded from the same paths) or a TOML file (``--variants``)."""

    def __init__(self, specs: list[VariantSpec] | None = None, file: str | Path | None = None, *,
                 served: str | Path | None = None):
        if (specs is None) == (file is None):
            raise ValueError("give the variant specs or a variants file, not both")
        self.file = None if file is None else Path(file)
        self._specs = specs
        #: where the specs served now are recorded and read back by a restarted worker (None: nowhere)
        self.served = Path(served) if served else None
        if self.served is None or not self.served.exists():
            self.specs()  # fail now on a bad config, not at the first reload

    def specs(self) -> list[VariantSpec]:
        if self.file is not None:
            return check_split(read_variants_file(self.file), str(self.file))
        assert self._specs is not None
        return check_split(list(self._specs), "--variant")

    def describe(self) -> str:
        return str(self.file) if self.file is not None else "command line"

    def recorded(self) -> list[VariantSpec] | None:
        """The specs recorded in :attr:`served` by a worker serving them, or None (no record)."""
        if self.served is None:
            return None
        with contextlib.suppress(FileNotFoundError):
            recorded = json.loads(self.served.read_text(encoding="utf-8"))
            return [VariantSpec(v["name"], v["artifact"], float(v["weight"])) for v in recorded]
        return None

    def recorded_checksums(self) -> dict[str, str]:
        """The ``router.onnx`` sha256 of each recorded variant the recording worker loaded (by name; empty
        without a record)."""
        if self.served is None:
            return {}
        with contextlib.suppress(FileNotFoundError):
            recorded = json.loads(self.served.read_text(encoding="utf-8"))
            return {v["name"]: v["artifact_sha256"] for v in recorded if v.get("artifact_sha256")}
        return {}

    def record(self, specs: list[VariantSpec], split: Split | None = None) -> None:
        """Write ``specs`` (with the checksum of each artifact ``split`` loaded) to :attr:`served`
        (atomically: a reader never sees half a file). A record that cannot be written is said on stderr,
        not raised: the variants serve, and a restarted worker would read the variants file instead."""
        if self.served is None:
            return
        loaded = {} if split is None else {v.name: v.checksum for v in split.variants}
        tmp = self.served.with_name(f"{self.served.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps([{"name": s.name, "artifact": s.artifact, "weight": s.weight,
                                        "artifact_sha256": loaded.get(s.name)} for s in specs]), encoding="utf-8")
            os.replace(tmp, self.served)
        except OSError as exc:
            say(f"error: cannot record the variants served in {self.served} ({exc.strerror or exc}); a worker "
                "restarted later reads them from the variants file")


@dataclass(frozen=True)
class Variant:
    name: str
    artifact: str
    weight: float
    router: Router  # prepared for the catalog (prices, exploration)

    @property
    def checksum(self) -> str:
        """The sha256 of the artifact's ``router.onnx`` (its manifest's, verified at load)."""
        return self.router.manifest["files"]["router.onnx"]

    def to_dict(self, total: float) -> dict[str, Any]:
        return {"name": self.name, "artifact": self.artifact, "weight": self.weight,
                "share": self.weight / total, "artifact_sha256": self.checksum}


class Split:
    """Variants and their cumulative shares: :meth:`pick` maps a key's hash onto them."""

    def __init__(self, variants: list[Variant]):
        live = [v for v in variants if v.weight > 0]
        self.variants = variants
        self.total = sum(v.weight for v in live)
        running, bounds = 0.0, []
        for v in live:
            running += v.weight
            bounds.append(running / self.total)
        bounds[-1] = 1.0
        self._bounds = bounds
        self._live = live
        # what a request without a split routes with, and what /health and the metrics show as "the router"
        self.primary = max(live, key=lambda v: v.weight)

    def pick(self, key: str) -> Variant:
        if len(self._live) == 1:
            return self._live[0]
        h = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
        return self._live[min(bisect.bisect_right(self._bounds, h / 2.0**64), len(self._live) - 1)]

    def to_list(self) -> list[dict[str, Any]]:
        return [v.to_dict(self.total) for v in self.variants]


def _first_split(source: VariantSource, catalog: ProviderCatalog, exploration: Exploration | None) -> Split:
    """The split a server starts on: what the other workers serve (their record) when there is one - again
    if they reloaded while this one loaded (a reload signal is ignored until it serves) - else the source's,
    which it then records."""
    specs = source.recorded()
    if specs is None:
        specs = source.specs()
        split = load_split(specs, catalog, exploration)
        source.record(specs, split)
        return split
    for _ in range(5):
        split = load_split(specs, catalog, exploration)
        now = source.recorded()
        if now is None or now == specs:
            break
        specs = now
    theirs = source.recorded_checksums()
    for v in split.variants:
        if theirs.get(v.name, v.checksum) != v.checksum:
            say(f"warning: variant {v.name!r} ({v.artifact}): the artifact changed on disk after the other workers "
                f"loaded it - they serve router.onnx sha256 {theirs[v.name][:12]}..., this worker "
                f"{v.checksum[:12]}...; until a reload (SIGHUP to the supervisor, or POST /admin/reload) the workers "
                "route with different routers (each decision logs its artifact_sha256). Export a new router to a "
                "new directory and point the variant at it")
    return split


def load_split(specs: list[VariantSpec], catalog: ProviderCatalog, exploration: Exploration | None) -> Split:
    """Load (and verify on this CPU) every variant's artifact and prepare it for ``catalog``; blocking."""
    variants = []
    for spec in specs:
        try:
            router = Router.load(spec.artifact, intra_op_threads=1, verify=True)
        except RouterMLError as exc:
            raise RouterMLError(f"variant {spec.name!r} ({spec.artifact}): {exc}") from None
        variants.append(Variant(spec.name, spec.artifact, spec.weight, prepare_router(router, catalog, exploration)[0]))
    return Split(variants)


class VariantClient(AsyncRoutedClient):
    """An :class:`AsyncRoutedClient` whose decisions come from a :class:`Split` of router variants (see the
    module doc); everything after the decision - upstreams, breakers, fallbacks, the log - is shared."""

    def __init__(self, source: VariantSource, catalog: ProviderCatalog, *, exploration: Exploration | None = None,
                 willingness_to_pay: float | None = None, split: Split | None = None, **kwargs: Any):
        if split is None:
            split = _first_split(source, catalog, exploration)
        cascade = kwargs.pop("cascade", None)
        super().__init__(split.primary.router, catalog, exploration=exploration,
                         willingness_to_pay=willingness_to_pay, **kwargs)
        if cascade is not None:  # it serves the requests of the variants it was fitted on (any, not only the primary)
            self._check_cascade(cascade, exploration, [(f"variant {v.name!r}", v.router) for v in split.variants])
            self.cascade = cascade
        self.source = source
        self.exploration = exploration
        self._knob = self.willingness_to_pay if willingness_to_pay is not None else None
        self._reloading = asyncio.Lock()
        self.reloads = 0
        self._use(split)

    def _use(self, split: Split) -> None:
        self.split = split
        self.router = split.primary.router

    def decide(self, body: dict[str, Any], headers: Mapping[str, str] | None = None,
               willingness_to_pay: Any = None) -> tuple[Any, str]:
        """Pick the variant (a hash of the body's ``user``, else of the request id), then decide with it."""
        request_id = new_request_id()
        user = body.get("user") if isinstance(body, dict) else None
        variant = self.split.pick(user if isinstance(user, str) and user else request_id)
        router = variant.router
        info, text = decide(body, router=router, catalog=self.catalog,
                            default_knob=router.willingness_to_pay if self._knob is None else self._knob,
                            headers=headers, willingness_to_pay=willingness_to_pay)
        info.request_id, info.variant = request_id, variant.name
        return info, text

    async def reload(self) -> list[dict[str, Any]]:
        """Re-read the variants and load their artifacts off the event loop, then swap them in at once.
        Raises :class:`RouterMLError` (the current variants stay) when any of them cannot be loaded."""
        async with self._reloading:
            specs = self.source.specs()
            split = await asyncio.to_thread(load_split, specs, self.catalog, self.exploration)
            self._use(split)
            self.source.record(specs, split)
            self.reloads += 1
            return split.to_list()
