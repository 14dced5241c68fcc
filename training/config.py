"""Training configuration: frozen dataclasses loaded from TOML, overridable with ``--set``.

A config file has one table per section (``[data]``, ``[featurizer]``, ``[router]``, ``[loss]``,
``[train]``, ``[eval]``, ``[scorer]``, ``[tracking]``); every key is optional and defaults below. Overrides use
dotted keys (``router.hidden=512``); unknown sections or keys are rejected with the list of valid
ones. ``to_flat()`` gives the ``section.key -> value`` dict that is logged to MLflow and saved with
the router, and ``from_flat`` reads it back.

Every way in (``load_config``, ``TrainConfig.from_flat``, ``replace``) validates the whole config -
names (router kind, featurizer, baselines, groups), ranges and combinations - so a bad value fails
before any data is read or featurized, with an error that names the key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from router_ml.errors import RouterMLError
from training.baselines import BASELINES
from training.configs import CONFIGS_DIR, DEFAULT_CONFIG, packaged_config

__all__ = ["BASELINE_NAMES", "CONFIGS_DIR", "DEFAULT_CONFIG", "ConfigError", "TrainConfig", "load_config",
           "packaged_config"]


#: The baselines ``eval.baselines`` may name, in report order: the names of the evaluation's registry
#: (:data:`training.baselines.BASELINES`; ``knn`` and ``logreg`` are trained on the featurizer's features).
BASELINE_NAMES = tuple(BASELINES)


class ConfigError(RouterMLError, ValueError):
    """A config file or override is invalid."""


@dataclass(frozen=True)
class DataConfig:
    train_size: float = 0.7        #: records (count) or share (fraction < 1) of train + validation
    val_size: float = 0.1          #: count or share of the train part held out for early stopping
    seed: int = 0                  #: split and training seed


@dataclass(frozen=True)
class FeaturizerConfig:
    name: str = "static"           #: static | minilm | path to a local encoder directory
    max_tokens: int = 256          #: longer prompts keep head and tail tokens
    batch_size: int = 64
    num_proc: int = 0              #: worker processes; 0 = every core where the featurizer supports it (static)


@dataclass(frozen=True)
class RouterConfig:
    kind: str = "mlp"              #: auto | mlp | mf | encoder (see training.routers.ROUTERS)
    hidden: int = 512
    layers: int = 1
    dropout: float = 0.3
    ensemble: int = 1              #: members trained with seeds seed, seed+1, ...; their logits averaged
    model_dim: int = 64            #: mf: size of the learned model embeddings
    encoder: str = "minilm"        #: encoder: checkpoint directory (or "minilm")
    max_length: int = 256          #: encoder: tokens per prompt
    encoder_layers: int = 0        #: encoder: keep only the first N transformer layers (0 = all); faster
    groups: str = ""               #: mlp/mf: "task" or "metadata.<key>": blend in p(group | prompt) x group means
    group_weight: float = 0.5      #: mlp/mf with groups: weight of the group estimate in the blend
    # kind = "auto" (training/routers/auto.py): the candidates fitted and chosen between by held-out AIQ
    candidates: tuple[str, ...] = ("mlp", "mf", "groups", "logreg", "knn", "lexical", "encoder", "ensemble")
    #: auto: the group fields tried by the "groups" candidate and the group blend: "task", "metadata.<key>",
    #: "metadata.*" (every metadata key that names 2+ groups of 10+ records on average); empty = never
    auto_groups: tuple[str, ...] = ("task", "metadata.*")
    #: auto: weights tried for blending the chosen router with a group estimate (empty = no blend stage)
    group_blend: tuple[str, ...] = ("0.25", "0.5")
    cv_below: int = 20000          #: auto: cross-validate when train + validation hold fewer records
    cv_folds: int = 5              #: auto: folds of that cross-validation
    logreg_c: tuple[str, ...] = ("0.03", "0.1", "0.3", "1", "10")  #: auto: inverse L2 strengths tried for logreg
    knn_k: tuple[str, ...] = ("10", "25", "50", "100", "200", "400")  #: auto: neighbour counts tried for knn
    knn_records: int = 10000       #: auto: training prompts a chosen kNN stores (a seeded sample; 0 = all)
    #: auto: kNN searches in the stored prompts' top this many singular directions where that is cheaper
    #: (training.routers.heads.knn_projection; 0 = in the full features)
    knn_dims: int = 128
    lexical_c: tuple[str, ...] = ("0.1", "0.3", "1")  #: auto: inverse L2 strengths tried for lexical
    #: auto: the lexical candidate is tried from this many train + validation records (below, its weight per
    #: vocabulary token and model overfit: docs/auto-router-studies.md, "The lexical candidate")
    lexical_min_records: int = 1000
    #: auto: the lexical regression's weight when it is blended into the chosen router (0 = never)
    lexical_blend: float = 0.2
    #: auto: try the lexical candidate on completed logged records too (there, for its blend only: nothing
    #: replaces the completed-log choice; README, "The lexical blend on a completed log")
    lexical_on_logs: bool = True
    #: auto: Platt-scale a candidate per model where that raises held-out AIQ (never on imputed cells)
    calibrate: bool = True
    #: auto: the candidates the ensemble averages, of those fitted (mlp, mf, groups, logreg, knn)
    ensemble_members: tuple[str, ...] = ("mlp", "mf", "groups", "logreg", "knn")
    #: auto: a single candidate replaces the ensemble only when it beats it on this share of paired
    #: bootstrap resamples of the held-out prompts (1 = every resample)
    ensemble_confidence: float = 0.95
    auto_pick: str = ""            #: auto: '' = the best held-out AIQ; a candidate's name keeps that one instead
    auto_encoder: str = "cuda"     #: auto: fit the "encoder" candidate: cuda (with a CUDA device) | always | never
    auto_encoder_config: str = "encoder_fast"  #: auto: its config: a name in training/configs or a TOML path
    auto_encoder_records: int = 100000  #: auto: above this many train + validation records the encoder is not tried
    #: auto: replace the chosen head by one MLP fitted to its predictions on the training prompts and on points
    #: between them (11 graph nodes, ~40 under a kept lexical blend, instead of up to ~90; test AIQ reported
    #: against the head it replaced: training/routers/distill.py)
    distill: bool = False
    #: auto, with distill: a kept lexical blend stays beside the student (the MLP imitates the head under it;
    #: the words' regression and its weight are kept as chosen); false: the student imitates the whole head
    distill_lexical: bool = True


@dataclass(frozen=True)
class LossConfig:
    tradeoff_weight: float = 0.05  #: weight of the cost-aware regret term; 0 = plain quality loss
    temperature: float = 0.2       #: softness of the choice distribution in the regret term
    knob_samples: int = 8          #: willingness-to-pay values sampled per batch
    pairwise_weight: float = 1.0   #: weight of Bradley-Terry loss on preferences (mf)
    #: logged outcomes with a propensity p weigh min(1/p, this) in the quality loss; 0 (default) = off -
    #: importance weighting hurt on 2 of 3 simulated MMLU-Pro logs (README), so it is opt-in
    propensity_clip: float = 0.0
    #: what the loss sees for the models a logged record did not observe: "impute" (default) = targets
    #: completed from a cross-fitted first-stage router and the models' residual correlation
    #: (training/offpolicy.py); "mask" = those cells are left out of the loss
    logged_targets: str = "impute"
    imputed_weight: float = 0.5    #: loss weight of an imputed cell (an observed one weighs 1)
    impute_folds: int = 5          #: cross-fitting folds of the first-stage router
    impute_ridge: float = 0.05     #: ridge on the factor estimate (0 = unbiased GLS, 1 = posterior mean)


@dataclass(frozen=True)
class TrainLoopConfig:
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8              #: epochs without validation improvement before stopping
    device: str = "auto"           #: auto | cpu | cuda
    threads: int = 0               #: torch CPU threads; 0 = 1 for mlp/mf (tiny matrices), torch's default for encoder
    #: processes fitting the auto router's cross-validation parts (every candidate on every fold); 0 =
    #: automatic: one per available core from 2,000 cross-validated records, else this process alone
    workers: int = 0
    #: MiB of inputs and targets the loop holds at once: a split that fits trains from memory exactly as
    #: before; a larger one streams from the feature cache in windows of whole shards (training.trainer)
    memory_mb: int = 256
    max_steps: int = 0             #: stop after this many optimizer steps in all (0 = no limit; epochs still apply)


@dataclass(frozen=True)
class EvalConfig:
    knob_points: int = 81          #: willingness-to-pay values in the cost-quality sweep
    #: knob values added to each router's sweep where its own choices change (quantiles of its tie points,
    #: training.evaluation.router_wtps); 0 = the fixed grid alone
    knob_refine: int = 0
    n_boot: int = 200              #: bootstrap resamples for confidence intervals
    baselines: tuple[str, ...] = BASELINE_NAMES
    #: knn / logreg fit on at most this many training records and are scored on at most this many test
    #: records (seeded samples, reported as fit_records / scored_records); 0 = all
    baseline_records: int = 10000


@dataclass(frozen=True)
class ScorerConfig:
    """``[scorer]``: an answer scorer instead of a router (training/cascade). The encoder scorer reads
    ``router.encoder``, ``router.encoder_layers``, ``router.max_length`` (tokens of prompt + response)
    and ``router.dropout``; both read ``[train]`` for their loop and ``featurizer.max_tokens`` (static)."""

    kind: str = ""                 #: "" = train a router; static | encoder = train an answer scorer
    response_head: int = 64        #: static: tokens kept from an over-long response's start (the rest from its end)
    answer_features: bool = True   #: static: add the cheap answer features (router_ml/_answer_inputs.py)
    c_grid: tuple[str, ...] = ("0.0001", "0.0003", "0.001", "0.003")  #: static: L2 C, best val AUC
    prompt_tokens: int = 64        #: encoder: prompt tokens kept when prompt + response pass router.max_length
    train_triples: int = 0         #: (prompt, model, response) training triples: a seeded sample (0 = all)
    val_triples: int = 0           #: encoder: validation triples for early stopping (0 = all)
    eval_rows: int = 0             #: validation / test records whose answers are scored for the AUC (0 = all)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "router-ml"
    enabled: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The whole resolved configuration of one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    featurizer: FeaturizerConfig = field(default_factory=FeaturizerConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every setting (tuples as lists)."""
        out = {}
        for section in fields(self):
            for f in fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), f.name)
                out[f"{section.name}.{f.name}"] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> TrainConfig:
        """The config of a :meth:`to_flat` dict (a saved checkpoint's ``config.json``), validated."""
        return _build(_nest(flat), source=FLAT_SOURCE)

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with dotted-key overrides applied, e.g. ``replace(**{"loss.tradeoff_weight": 0})``."""
        flat = self.to_flat()
        for key, value in overrides.items():
            flat[key] = value
        return TrainConfig.from_flat(flat)


def _nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return nested


def _coerce(value: Any, target: Any, where: str) -> Any:
    kind = type(target)
    if isinstance(target, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0"}:
            return value.lower() in {"true", "1"}
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(target, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(str(v) for v in value)
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not isinstance(number, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if kind is int and not math.isfinite(number):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if kind is int:
            if float(number) != int(number):
                raise ConfigError(f"{where}: expected a whole number, got {value!r}")
            return int(number)
        return float(number)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected text, got {value!r}")
    return value


#: keys of earlier versions: a saved checkpoint's config drops them (they only steered how it was
#: trained); a config file or ``--set`` naming one is told what replaced it
RETIRED = {"router.ensemble_margin": "router.ensemble_confidence (the share of paired bootstrap resamples "
                                     "on which a single candidate must beat the ensemble, default 0.95)"}
FLAT_SOURCE = "<flat config>"


def _build(nested: dict[str, dict[str, Any]], *, source: str, check: bool = True) -> TrainConfig:
    sections = {f.name: f for f in fields(TrainConfig)}
    for key, instead in RETIRED.items():
        section, _, name = key.partition(".")
        if name in nested.get(section, {}):
            if source != FLAT_SOURCE:
                raise ConfigError(f"{source}: {key} was replaced by {instead}")
            nested[section] = {k: v for k, v in nested[section].items() if k != name}
    unknown = set(nested) - set(sections)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; valid: {sorted(sections)}")
    built = {}
    for name, f in sections.items():
        default = f.default_factory()  # type: ignore[misc]
        values = nested.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        valid = {x.name: getattr(default, x.name) for x in fields(default)}
        bad = set(values) - set(valid)
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {sorted(f'{name}.{b}' for b in bad)}; "
                              f"valid keys in [{name}]: {sorted(valid)}")
        built[name] = dataclasses.replace(
            default, **{k: _coerce(v, valid[k], f"{source}: {name}.{k}") for k, v in values.items()})
    config = TrainConfig(**built)
    if check:
        validate(config, source=source)
    return config


# --- validation -----------------------------------------------------------------------------------

def _whole_or_fraction(value: float, *, zero: bool) -> bool:
    """``data.train_size`` / ``val_size``: a fraction below 1 or a whole count (0 only where allowed)."""
    return (value == 0 and zero) or 0 < value < 1 or (value >= 1 and float(value).is_integer())


#: key -> (test, what the key accepts) for every numeric setting
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.train_size": (lambda v: _whole_or_fraction(v, zero=False), "a fraction in (0, 1) or a whole count >= 1"),
    "data.val_size": (lambda v: _whole_or_fraction(v, zero=True), "0, a fraction in (0, 1) or a whole count"),
    "data.seed": (lambda v: v >= 0, "an integer >= 0"),
    "featurizer.max_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "featurizer.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "featurizer.num_proc": (lambda v: v >= 0, "an integer >= 0 (0 = every core where the featurizer allows)"),
    "router.hidden": (lambda v: v >= 1, "an integer >= 1"),
    "router.layers": (lambda v: v >= 0, "an integer >= 0 (0 = a linear head)"),
    "router.dropout": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "router.ensemble": (lambda v: v >= 1, "an integer >= 1"),
    "router.model_dim": (lambda v: v >= 1, "an integer >= 1"),
    # the encoder keeps its two special tokens ([CLS] ... [SEP]) and at least one text token
    "router.max_length": (lambda v: v >= 3, "an integer >= 3 (two special tokens and the text)"),
    "router.encoder_layers": (lambda v: v >= 0, "an integer >= 0 (0 = all layers)"),
    "router.group_weight": (lambda v: 0 <= v <= 1, "a weight in [0, 1]"),
    "router.cv_below": (lambda v: v >= 0, "an integer >= 0 (0 = never cross-validate a large enough split)"),
    "router.cv_folds": (lambda v: v >= 2, "an integer >= 2"),
    "router.ensemble_confidence": (lambda v: 0 <= v <= 1, "a share between 0 and 1"),
    "router.knn_records": (lambda v: v >= 0, "an integer >= 0 (0 = all)"),
    "router.knn_dims": (lambda v: v >= 0, "an integer >= 0 (0 = the full features)"),
    "router.lexical_min_records": (lambda v: v >= 0, "an integer >= 0 (0 = at any size)"),
    "router.lexical_blend": (lambda v: 0 <= v < 1, "a weight in [0, 1) (0 = no lexical blend)"),
    "router.auto_encoder_records": (lambda v: v >= 1, "an integer >= 1"),
    "loss.tradeoff_weight": (lambda v: v >= 0, "a number >= 0"),
    "loss.temperature": (lambda v: v > 0, "a number > 0"),
    "loss.knob_samples": (lambda v: v >= 1, "an integer >= 1"),
    "loss.pairwise_weight": (lambda v: v >= 0, "a number >= 0"),
    "loss.propensity_clip": (lambda v: v == 0 or v >= 1, "0 (off) or a weight cap >= 1"),
    "loss.imputed_weight": (lambda v: 0 < v <= 1, "a weight in (0, 1]"),
    "loss.impute_folds": (lambda v: v >= 2, "an integer >= 2"),
    "loss.impute_ridge": (lambda v: v >= 0, "a number >= 0"),
    "train.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.lr": (lambda v: v > 0, "a number > 0"),
    "train.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "train.patience": (lambda v: v >= 1, "an integer >= 1 (epochs without improvement before stopping)"),
    "train.threads": (lambda v: v >= 0, "an integer >= 0 (0 = the router's default)"),
    "train.workers": (lambda v: v >= 0, "an integer >= 0 (0 = one per available core where it pays)"),
    "train.memory_mb": (lambda v: v >= 1, "an integer >= 1 (MiB of inputs and targets held at once)"),
    "train.max_steps": (lambda v: v >= 0, "an integer >= 0 (0 = no limit)"),
    "eval.knob_points": (lambda v: v >= 2, "an integer >= 2"),
    "eval.knob_refine": (lambda v: v >= 0, "an integer >= 0 (0 = the fixed knob grid alone)"),
    "eval.n_boot": (lambda v: v >= 0, "an integer >= 0 (0 = no confidence intervals)"),
    "eval.baseline_records": (lambda v: v >= 0, "an integer >= 0 (0 = all records)"),
    "scorer.response_head": (lambda v: v >= 0, "an integer >= 0"),
    "scorer.prompt_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "scorer.train_triples": (lambda v: v >= 0, "an integer >= 0 (0 = all)"),
    "scorer.val_triples": (lambda v: v >= 0, "an integer >= 0 (0 = all)"),
    "scorer.eval_rows": (lambda v: v >= 0, "an integer >= 0 (0 = all)"),
}
_DEVICES = ("auto", "cpu", "cuda")
LOGGED_TARGETS = ("impute", "mask")
#: what router.ensemble_members may name: the auto candidates over the same static features
ENSEMBLE_MEMBERS = ("mlp", "mf", "groups", "logreg", "knn")


def _router_kinds() -> list[str]:
    """The trainable routers of :data:`training.routers.ROUTERS` (imported here, not at module level:
    the routers import this module)."""
    from training.routers import ROUTERS, TorchRouter

    return sorted(name for name, cls in ROUTERS.items() if issubclass(cls, TorchRouter))


def _is_path(text: str) -> bool:
    """Whether a model name is meant as a directory (checked to exist by :func:`load_config` only)."""
    return "/" in text or "\\" in text or text.startswith(("~", ".")) or Path(text).expanduser().is_dir()


def validate(config: TrainConfig, *, source: str = "<config>") -> None:
    """Check every name, range and combination of ``config``; raise :class:`ConfigError` naming the key.

    >>> validate(TrainConfig())  # the defaults are valid
    """
    from training.featurizers import FEATURIZERS

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key}: {message}")

    flat = config.to_flat()
    for key, (ok, accepts) in _RANGES.items():
        value = flat[key]
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            fail(key, f"expected {accepts}, got {value!r}")
    kinds = _router_kinds()
    if config.router.kind not in kinds:
        fail("router.kind", f"unknown router {config.router.kind!r}; choose one of {', '.join(kinds)}")
    name = config.featurizer.name
    if name not in FEATURIZERS and not _is_path(name):
        fail("featurizer.name", f"unknown featurizer {name!r}; choose one of {', '.join(sorted(FEATURIZERS))} "
                                "or give the path of a local model directory (e.g. ./models/my-encoder)")
    encoder = config.router.encoder
    if encoder != "minilm" and not _is_path(encoder):
        fail("router.encoder", f"expected 'minilm' or the path of a local BERT-family checkpoint, got {encoder!r}")
    if config.train.device not in _DEVICES:
        fail("train.device", f"expected one of {', '.join(_DEVICES)}, got {config.train.device!r}")
    if not config.tracking.experiment.strip():
        fail("tracking.experiment", "expected a non-empty experiment name")
    seen: set[str] = set()
    for i, baseline in enumerate(config.eval.baselines):
        if baseline not in BASELINE_NAMES:
            fail(f"eval.baselines[{i}]", f"unknown baseline {baseline!r}; choose from {', '.join(BASELINE_NAMES)}")
        if baseline in seen:
            fail(f"eval.baselines[{i}]", f"{baseline!r} is listed twice")
        seen.add(baseline)
    if config.loss.logged_targets not in LOGGED_TARGETS:
        fail("loss.logged_targets", f"expected one of {', '.join(LOGGED_TARGETS)}, got {config.loss.logged_targets!r}")
    _validate_auto(config, fail)
    if config.router.distill and config.router.kind != "auto":
        fail("router.distill", f"distils the auto router's chosen head into one MLP; router.kind is "
                               f"{config.router.kind!r}, whose head is one already: leave router.distill false")
    _validate_scorer(config, fail)
    groups = config.router.groups
    if groups:
        if groups != "task" and not (groups.startswith("metadata.") and len(groups) > len("metadata.")):
            fail("router.groups", f"expected '', 'task' or 'metadata.<key>', got {groups!r}")
        if config.router.kind == "encoder":
            fail("router.groups", "works with the mlp and mf routers (static or sentence features), not the "
                                  "encoder; leave router.groups empty or choose router.kind = mlp or mf")


def _validate_auto(config: TrainConfig, fail: Callable[[str, str], None]) -> None:
    """The ``router.kind = "auto"`` settings: known candidates, numeric grids, a valid group field."""
    from training.routers.auto_choice import AUTO_CANDIDATES
    from training.routers.auto_encoder import AUTO_ENCODER

    r = config.router
    if not r.candidates:
        fail("router.candidates", f"expected at least one of {', '.join(AUTO_CANDIDATES)}")
    for i, name in enumerate(r.candidates):
        if name not in AUTO_CANDIDATES:
            fail(f"router.candidates[{i}]", f"unknown candidate {name!r}; choose from {', '.join(AUTO_CANDIDATES)}")
    for key, values, whole in (("router.logreg_c", r.logreg_c, False), ("router.knn_k", r.knn_k, True),
                               ("router.lexical_c", r.lexical_c, False)):
        for i, text in enumerate(values):
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not (value > 0 and math.isfinite(value)) or (whole and not value.is_integer()):
                fail(f"{key}[{i}]", f"expected a {'whole number >= 1' if whole else 'number > 0'}, got {text!r}")
        if not values:
            fail(key, "expected at least one value")
    if r.auto_pick and r.auto_pick not in r.candidates:
        fail("router.auto_pick", f"expected '' or one of router.candidates ({', '.join(r.candidates)}), "
                                 f"got {r.auto_pick!r}")
    for i, member in enumerate(r.ensemble_members):
        if member not in ENSEMBLE_MEMBERS:
            fail(f"router.ensemble_members[{i}]", f"expected one of {', '.join(ENSEMBLE_MEMBERS)} (the candidates over "
                                                  f"the static features), got {member!r}")
    if "ensemble" in r.candidates and not r.ensemble_members:
        fail("router.ensemble_members", "empty, and router.candidates lists the ensemble: name at least two of "
                                        f"{', '.join(ENSEMBLE_MEMBERS)}, or leave the ensemble out of the candidates")
    if "ensemble" in r.candidates and len(set(r.candidates) & set(r.ensemble_members)) < 2:
        fail("router.candidates", "the ensemble averages the candidates of router.ensemble_members ("
                                  f"{', '.join(r.ensemble_members) or 'none'}): list at least two of them in "
                                  "router.candidates, or add to router.ensemble_members")
    for i, field_ in enumerate(r.auto_groups):
        if field_ != "task" and not (field_.startswith("metadata.") and len(field_) > len("metadata.")):
            fail(f"router.auto_groups[{i}]", f"expected 'task', 'metadata.<key>' or 'metadata.*', got {field_!r}")
    for i, text in enumerate(r.group_blend):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:
            fail(f"router.group_blend[{i}]", f"expected a weight in (0, 1], got {text!r}")
    if r.auto_encoder not in AUTO_ENCODER:
        fail("router.auto_encoder", f"expected one of {', '.join(AUTO_ENCODER)}, got {r.auto_encoder!r}")
    if r.kind == "auto" and r.groups:
        fail("router.groups", "the auto router tries group-informed routing itself (router.auto_groups); leave "
                              "router.groups empty")


def _validate_scorer(config: TrainConfig, fail: Callable[[str, str], None]) -> None:
    """The ``[scorer]`` settings: a known kind, a usable C grid, a response budget within the token budget."""
    from training.cascade.scorer import SCORERS

    s = config.scorer
    if s.kind and s.kind not in SCORERS:
        fail("scorer.kind", f"expected '' (train a router) or one of {', '.join(SCORERS)}, got {s.kind!r}")
    for i, text in enumerate(s.c_grid):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > 0 and math.isfinite(value)):
            fail(f"scorer.c_grid[{i}]", f"expected a number > 0, got {text!r}")
    if not s.c_grid:
        fail("scorer.c_grid", "expected at least one value")
    if s.response_head > config.featurizer.max_tokens:
        fail("scorer.response_head", f"expected at most featurizer.max_tokens ({config.featurizer.max_tokens}), "
                                     f"got {s.response_head}")
    if s.kind == "encoder" and s.prompt_tokens > config.router.max_length - 4:
        fail("scorer.prompt_tokens", f"expected at most router.max_length - 4 ({config.router.max_length - 4}): "
                                     "the response needs room beside three special tokens")


def _check_paths(config: TrainConfig, source: str) -> None:
    """A config file (not a saved one: its paths may be elsewhere now) names directories that exist."""
    from training.featurizers import FEATURIZERS

    checks = [("featurizer.name", config.featurizer.name, tuple(FEATURIZERS))]
    if config.router.kind == "encoder" or config.scorer.kind == "encoder":
        checks.append(("router.encoder", config.router.encoder, ("minilm",)))
    for key, value, names in checks:
        if value not in names and not Path(value).expanduser().is_dir():
            raise ConfigError(f"{source}: {key}: {value!r} is not a directory; give the path of a local model "
                              "directory")


def parse_override(text: str) -> tuple[str, str]:
    """Split ``section.key=value``; the value is coerced later against the field's type."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML config (or the defaults when ``path`` is None) and apply overrides.

    >>> load_config(None, ["router.hidden=512"]).router.hidden
    512
    """
    nested: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        if (not Path(path).exists() and Path(path).suffix == "" and len(Path(path).parts) == 1
                and packaged_config(str(path)).is_file()):  # a shipped config by name: --config mlp_static
            path = source = str(packaged_config(str(path)))
        try:
            nested = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
        except OSError as exc:
            shipped = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.toml")))
            raise ConfigError(f"cannot read config {path}: {exc.strerror} (a TOML file, or the name of a shipped "
                              f"config: {shipped})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}; a UTF-16 or Latin-1 file, "
                              "as some editors save); save it as UTF-8") from None
    config = _build(nested, source=source, check=not overrides)  # overrides may mend the file: check the result
    if overrides:
        pairs = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
        flat = config.to_flat()
        for key, value in pairs:
            if key in RETIRED:
                raise ConfigError(f"--set: {key} was replaced by {RETIRED[key]}")
            if key not in flat:
                raise ConfigError(f"--set: unknown key '{key}'; valid keys: {', '.join(sorted(flat))}")
            flat[key] = value
        source = f"{source} with --set"
        config = _build(_nest(flat), source=source)
    _check_paths(config, source)
    return config
