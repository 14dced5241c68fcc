"""The runtime: load an exported router artifact and decide, with numpy, onnxruntime and tokenizers.

>>> from router_ml import Router
>>> router = Router.load("models/demo-artifact")                # doctest: +SKIP
>>> router.route("Prove that sqrt(2) is irrational.").model     # doctest: +SKIP
'frontier-xl'

Loading verifies the manifest's format version and the sha256 of every file, so a tampered,
truncated or mismatched artifact raises :class:`ArtifactError` instead of routing wrongly. Any
Python ``str`` is valid input: lone surrogates are replaced, megabyte texts are clipped by the
fixed rules of :mod:`router_ml.truncation`, and a text with no known token (empty, whitespace)
routes on an all-zero feature vector - the router's decision for "nothing known about the prompt",
flagged ``Decision.empty``. One ``Router`` may be shared by many threads.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.errors import RouterMLError
from router_ml.policy import CostModel, choose, estimate_input_tokens
from router_ml.pricing import PriceCatalog
from router_ml.truncation import clip_chars, head_tail, sanitize

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_VERSION", "ArtifactError", "Decision", "Router"]

ARTIFACT_FORMAT = "router-ml-artifact"
ARTIFACT_VERSION = 1
_REQUIRED = ("router.onnx", "tokenizer.json")


class ArtifactError(RouterMLError):
    """A router artifact is missing, corrupted, or of an unsupported version."""


@dataclass(frozen=True)
class Decision:
    """One routing decision.

    ``model`` is the chosen model, ``scores`` the predicted quality of every model, ``costs`` the
    expected USD cost of calling each, ``expected_cost`` the chosen model's, ``willingness_to_pay``
    the knob used (USD per unit of quality; ``inf`` = best predicted quality), and ``empty`` is true
    when the prompt had no known token.
    """

    model: str
    scores: Mapping[str, float]
    costs: Mapping[str, float]
    expected_cost: float
    willingness_to_pay: float
    empty: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "scores": dict(self.scores), "costs": dict(self.costs),
                "expected_cost": self.expected_cost,
                "willingness_to_pay": None if math.isinf(self.willingness_to_pay) else self.willingness_to_pay,
                "empty": self.empty}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve(path: str | Path) -> Path:
    text = str(path)
    if text.startswith(("runs:/", "models:/")):
        try:
            import mlflow
        except ImportError as exc:
            raise ArtifactError(f"loading {text} needs mlflow: pip install mlflow (or router-ml[train])") from exc
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
    return Path(path)


class Router:
    """A loaded router artifact. Build it with :meth:`load`."""

    def __init__(self, directory: Path, manifest: dict[str, Any], session: Any, tokenizer: Any):
        self.directory = directory
        self.manifest = manifest
        self._session = session
        self._tokenizer = tokenizer
        tok = manifest["tokenizer"]
        self._add_special = bool(tok["add_special_tokens"])
        self._drop = {i for i in tok.get("drop_ids") or [] if i is not None}
        self._max_tokens = int(tok["max_tokens"])
        self._head = tok.get("head")
        if self._head is None:
            self._head = (3 * self._max_tokens) // 4
        self._max_chars = int(tok["max_chars"])
        self.models: tuple[str, ...] = tuple(manifest["models"])
        self.cost_model = CostModel.from_dict(manifest["policy"]["cost_model"])
        wtp = manifest["policy"].get("willingness_to_pay")
        self.willingness_to_pay: float = math.inf if wtp is None else float(wtp)
        self._input_names = [i.name for i in session.get_inputs()]
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self._set_costs(self.cost_model)

    def _set_costs(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model
        self._fixed = np.asarray(cost_model.fixed_usd, dtype=np.float64)
        self._per_token = np.asarray(cost_model.per_input_token_usd, dtype=np.float64)

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, session_options: Any = None, providers: Sequence[str] | None = None,
             intra_op_threads: int | None = None) -> Router:
        """Load and verify an artifact directory (or an MLflow ``runs:/`` / ``models:/`` URI).

        ``session_options`` is an ``onnxruntime.SessionOptions``; ``intra_op_threads`` is a shortcut
        for its thread count (1 is best for single-prompt latency); ``providers`` defaults to CPU.
        """
        directory = _resolve(path)
        manifest_path = directory / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"{directory}: not a router artifact (no manifest.json)") from None
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{manifest_path}: unreadable manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"{manifest_path}: not a {ARTIFACT_FORMAT} manifest")
        version = manifest.get("format_version")
        if version != ARTIFACT_VERSION:
            raise ArtifactError(f"{manifest_path}: artifact format version {version!r}; this router-ml reads "
                                f"version {ARTIFACT_VERSION} - upgrade router-ml or re-export the router")
        files = manifest.get("files") or {}
        if not isinstance(files, dict):
            raise ArtifactError(f"{manifest_path}: 'files' must map file names to sha256 checksums")
        for name in _REQUIRED:
            if name not in files:
                raise ArtifactError(f"{manifest_path}: no checksum for {name}; the manifest was edited")
        for name, expected in files.items():
            file = directory / name
            if not file.is_file():
                raise ArtifactError(f"{directory}: missing {name}")
            if _sha256(file) != expected:
                raise ArtifactError(f"{file}: checksum mismatch - the file was changed or truncated after export")
        try:
            for key in ("models", "tokenizer", "policy"):
                manifest[key]  # noqa: B018 - presence check
            import onnxruntime as ort
            from tokenizers import Tokenizer

            options = session_options or ort.SessionOptions()
            if intra_op_threads is not None:
                options.intra_op_num_threads = intra_op_threads
            session = ort.InferenceSession(str(directory / "router.onnx"), sess_options=options,
                                           providers=list(providers or ["CPUExecutionProvider"]))
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
            tokenizer.no_padding()
            tokenizer.no_truncation()
            router = cls(directory, manifest, session, tokenizer)
        except KeyError as exc:
            raise ArtifactError(f"{manifest_path}: missing field {exc}") from exc
        except RouterMLError:
            raise
        except Exception as exc:  # onnxruntime / tokenizers reject a broken file with many types
            raise ArtifactError(f"{directory}: cannot load the router ({type(exc).__name__}: {exc})") from exc
        outputs = session.get_outputs()[0].shape
        if outputs and isinstance(outputs[-1], int) and outputs[-1] != len(router.models):
            raise ArtifactError(f"{directory}: the graph scores {outputs[-1]} models but the manifest names "
                                f"{len(router.models)}")
        return router

    # --- scoring ----------------------------------------------------------------------------

    def prepare_text(self, text: str) -> str:
        """The text the router reads of ``text``: surrogates replaced, clipped to ``max_chars``."""
        return clip_chars(sanitize(text), self._max_chars)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` int64 arrays for one prompt (the graph's inputs)."""
        if not isinstance(text, str):
            raise TypeError(f"a prompt must be str, not {type(text).__name__}")
        return self._ids(self._encode_fast([self.prepare_text(text)])[0].ids)

    def _ids(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Apply the token rules (drop ids, head + tail) and build the graph inputs."""
        if self._drop:
            ids = [i for i in ids if i not in self._drop]
        if self._add_special:
            if len(ids) > self._max_tokens + 2:
                ids = ids[:1] + head_tail(ids[1:-1], max_tokens=self._max_tokens, head=self._head) + ids[-1:]
        elif len(ids) > self._max_tokens:
            ids = head_tail(ids, max_tokens=self._max_tokens, head=self._head)
        if not ids:  # nothing known: one masked-out token, i.e. an all-zero feature vector
            return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
        return np.asarray(ids, dtype=np.int64), np.ones(len(ids), dtype=np.int64)

    def _encode_fast(self, texts: list[str]) -> list[Any]:
        # encode_batch_fast skips offset tracking: about a third faster than encode() for one prompt
        return self._encode_batch(texts, add_special_tokens=self._add_special)

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input_names[0]: ids, self._input_names[1]: mask})[0]

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), len(models))`` predicted quality in [0, 1]."""
        return self._predict(texts)[0]

    def _predict(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(texts, str):
            raise TypeError("predict takes a list of prompts; use route() for one")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"prompt {i} must be str, not {type(text).__name__}")
        encoded = [self._ids(e.ids) for e in self._encode_fast([self.prepare_text(t) for t in texts])]
        empty = np.array([not mask.any() for _, mask in encoded], dtype=bool)
        if not encoded:
            return np.zeros((0, len(self.models)), dtype=np.float32), empty
        out = np.empty((len(encoded), len(self.models)), dtype=np.float32)
        # group by padded width so that batches stay small and padding stays cheap
        order = np.argsort([len(ids) for ids, _ in encoded], kind="stable")
        for start in range(0, len(order), 256):
            chunk = order[start:start + 256]
            width = max(len(encoded[i][0]) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                n = len(encoded[i][0])
                ids[row, :n], mask[row, :n] = encoded[i]
            out[chunk] = self._run(ids, mask)
        return out, empty

    # --- deciding ---------------------------------------------------------------------------

    def with_prices(self, prices: PriceCatalog, expected_output_tokens: Mapping[str, float]) -> Router:
        """A router that prices calls with a new catalog - no retraining for a price change."""
        clone = object.__new__(Router)
        clone.__dict__.update(self.__dict__)
        clone._set_costs(CostModel.from_prices(prices, self.models, dict(expected_output_tokens)))
        return clone

    def costs(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, models)`` expected USD cost of calling each model on each prompt."""
        return self.cost_model.estimate(estimate_input_tokens([self.prepare_text(t) for t in texts]))

    def route_batch(self, texts: Sequence[str], *, willingness_to_pay: float | None = None) -> list[Decision]:
        """Decide for many prompts; ``willingness_to_pay`` (USD per unit quality) overrides the default."""
        wtp = self.willingness_to_pay if willingness_to_pay is None else float(willingness_to_pay)
        if not wtp >= 0:
            raise ValueError(f"willingness_to_pay must be >= 0 USD per unit of quality, got {willingness_to_pay}")
        if isinstance(texts, str):
            raise TypeError("route_batch takes a list of prompts; use route() for one")
        texts = list(texts)
        scores, empties = self._predict(texts)
        costs = self.costs(texts)
        chosen = choose(scores, costs, wtp)
        decisions = []
        for i, j in enumerate(chosen):
            empty = bool(empties[i])
            decisions.append(Decision(
                model=self.models[int(j)],
                scores=dict(zip(self.models, scores[i].astype(float).tolist(), strict=True)),
                costs=dict(zip(self.models, costs[i].tolist(), strict=True)),
                expected_cost=float(costs[i, j]), willingness_to_pay=wtp, empty=empty))
        return decisions

    def route(self, text: str, *, willingness_to_pay: float | None = None) -> Decision:
        """Decide for one prompt (the same decision as ``route_batch([text])``, on a shorter path)."""
        wtp = self.willingness_to_pay if willingness_to_pay is None else float(willingness_to_pay)
        if not wtp >= 0:
            raise ValueError(f"willingness_to_pay must be >= 0 USD per unit of quality, got {willingness_to_pay}")
        if not isinstance(text, str):
            raise TypeError(f"a prompt must be str, not {type(text).__name__}")
        prepared = self.prepare_text(text)
        ids, mask = self._ids(self._encode_fast([prepared])[0].ids)
        scores = self._run(ids[None, :], mask[None, :])[0].astype(np.float64)
        costs = self._fixed + ((len(prepared) + 3) // 4) * self._per_token
        # the policy of router_ml.policy.choose, inlined for one row (same utility, same tie-break)
        top = costs.max()
        tie = costs * (1e-9 / top) if top > 0 else 0.0
        if wtp == 0:
            utility = -costs
        elif math.isinf(wtp):
            utility = scores - tie
        else:
            utility = scores - costs / wtp - tie
        j = int(np.argmax(utility))
        return Decision(model=self.models[j], scores=dict(zip(self.models, scores.tolist(), strict=True)),
                        costs=dict(zip(self.models, costs.tolist(), strict=True)),
                        expected_cost=float(costs[j]), willingness_to_pay=wtp, empty=not mask[0])

    def calibrate(self, prompts: Sequence[str], *, target_cost_per_request: float | None = None,
                  target_share: tuple[str, float] | None = None) -> float:
        """Set (and return) the default willingness to pay so that, on ``prompts``, the mean expected
        cost per request is at most ``target_cost_per_request`` USD, or the share of calls to model
        ``target_share[0]`` is at most ``target_share[1]``. Bisection on a log scale."""
        if (target_cost_per_request is None) == (target_share is None):
            raise ValueError("give exactly one of target_cost_per_request or target_share")
        if isinstance(prompts, str):
            raise TypeError("calibrate takes a list of sample prompts")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("calibrate needs at least one sample prompt")
        if target_share is not None and target_share[0] not in self.models:
            raise ValueError(f"unknown model {target_share[0]!r}; the router's models are {list(self.models)}")
        scores, costs = self.predict(prompts), self.costs(prompts)

        def measure(w: float) -> float:
            chosen = choose(scores, costs, w)
            if target_cost_per_request is not None:
                return float(costs[np.arange(len(chosen)), chosen].mean())
            return float(np.mean(chosen == self.models.index(target_share[0])))

        target = target_cost_per_request if target_cost_per_request is not None else target_share[1]
        if measure(math.inf) <= target:
            self.willingness_to_pay = math.inf
            return self.willingness_to_pay
        if measure(0.0) > target:
            name = "target_cost_per_request" if target_share is None else "target_share"
            raise ValueError(f"{name} {target} cannot be reached: even the cheapest choices give "
                             f"{measure(0.0)} on these prompts")
        scale = float(np.max(costs)) or 1.0
        low, high = scale * 1e-6, scale * 1e6
        if measure(low) > target:
            low = 0.0  # only the cheapest-model end meets the target
            self.willingness_to_pay = low
            return low
        for _ in range(80):
            mid = math.sqrt(low * high)
            low, high = (mid, high) if measure(mid) <= target else (low, mid)
        self.willingness_to_pay = low
        return low
