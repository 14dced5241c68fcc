"""The runtime: load an exported router artifact and decide, with numpy, onnxruntime and tokenizers.

>>> from router_ml import Router
>>> router = Router.load("models/demo-artifact")                # doctest: +SKIP
>>> router.route("Prove that sqrt(2) is irrational.").model     # doctest: +SKIP
'frontier-xl'

Loading verifies the manifest's format version and the sha256 of every file, so a tampered,
truncated or mismatched artifact raises :class:`ArtifactError` instead of routing wrongly; with
``verify=True`` it also re-scores the artifact's stored parity sample on this machine and refuses a
graph (int8 above all) whose routes drift past the export's limit here (:mod:`router_ml.parity`). Any
Python ``str`` is valid input: lone surrogates are replaced, megabyte texts are clipped by the
fixed rules of :mod:`router_ml.truncation`, and a text with no known token (empty, whitespace)
routes on an all-zero feature vector - the router's decision for "nothing known about the prompt",
flagged ``Decision.empty``. One ``Router`` may be shared by many threads.

Speed: a static router's graph takes tens of microseconds, so the Python around it decides the
latency. An artifact whose ``tokenizer.json`` is exactly BERT's WordPiece (static routers) tokenizes
ASCII prompts with the exact, cached pure-Python :mod:`router_ml._wordpiece` - about 10x cheaper
than a ``tokenizers`` call - and any other text with the library; :meth:`Router.route` applies
the policy to a handful of Python floats; batches go to onnxruntime in chunks of similar length.
"""

from __future__ import annotations

import hashlib
import json
import math
from array import array
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_ml._numbers import is_number, is_whole
from router_ml._wordpiece import IDS_TYPECODE, FastWordPiece
from router_ml.errors import RouterMLError
from router_ml.exploration import Exploration, Explorer
from router_ml.formats import read_versioned
from router_ml.messages import prompt_text
from router_ml.parity import check_sample
from router_ml.policy import CostModel, choose, estimate_input_tokens, wtp_from_json, wtp_to_json
from router_ml.pricing import PriceCatalog
from router_ml.truncation import clip_chars, sanitize

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_VERSION", "ArtifactError", "Decision", "Router", "read_artifact_manifest"]

ARTIFACT_FORMAT = "router-ml-artifact"
ARTIFACT_VERSION = 1
_REQUIRED = ("router.onnx", "tokenizer.json")


class ArtifactError(RouterMLError):
    """A router artifact is missing, corrupted, or of an unsupported version."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One routing decision.

    ``model`` is the chosen model, ``scores`` the predicted quality of every model, ``costs`` the
    expected USD cost of calling each, ``expected_cost`` the chosen model's, ``willingness_to_pay``
    the knob used (USD per unit of quality; ``inf`` = best predicted quality), and ``empty`` is true
    when the prompt had no known token. ``propensity`` is the probability with which the router's
    exploration policy (:mod:`router_ml.exploration`) chose ``model`` - exactly 1.0 without exploration -
    and ``explored`` is true when ``model`` is not the greedy choice.
    """

    model: str
    scores: Mapping[str, float]
    costs: Mapping[str, float]
    expected_cost: float
    willingness_to_pay: float
    empty: bool = False
    propensity: float = 1.0
    explored: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "scores": dict(self.scores), "costs": dict(self.costs),
                "expected_cost": self.expected_cost,
                "willingness_to_pay": wtp_to_json(self.willingness_to_pay),
                "empty": self.empty, "propensity": self.propensity, "explored": self.explored}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (the artifact manifest's checksums)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: what each artifact kind is loaded with (a manifest without ``kind`` is a router's: they predate it)
_LOADERS = {"router": "router_ml.Router.load", "scorer": "router_ml.AnswerScorer.load"}


def _checkpoint_hint(directory: Path, kind: str) -> str:
    """What to do when ``directory`` is a training checkpoint where an exported artifact was expected (the
    natural slip after ``router-ml train --out models/demo``: the artifact is ``models/demo/artifact``)."""
    try:
        fmt = json.loads((directory / "manifest.json").read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(fmt, str) or "checkpoint" not in fmt:
        return ""
    if (directory / "artifact" / "manifest.json").is_file():
        return f"; this is a training checkpoint - its exported {kind} is {directory / 'artifact'}"
    return (f"; this is a training checkpoint - export it first: router-ml export --checkpoint {directory} "
            f"--out {directory / 'artifact'}")


def read_artifact_manifest(directory: Path, *, kind: str, required: Sequence[str]) -> dict[str, Any]:
    """The manifest of the artifact in ``directory``, after checking its format version, that it is
    an artifact of ``kind`` (``router`` or ``scorer``), and the sha256 of every file it lists (which
    must include ``required``). Raises :class:`ArtifactError` saying what is wrong and what to do."""
    manifest_path = directory / "manifest.json"
    try:
        manifest = read_versioned(manifest_path, what=f"{kind} artifact", fmt=ARTIFACT_FORMAT,
                                  version=ARTIFACT_VERSION, fix=f"re-export the {kind}", error=ArtifactError)
    except ArtifactError as exc:
        raise ArtifactError(f"{exc}{_checkpoint_hint(directory, kind)}") from None
    found = manifest.get("kind", "router")
    if found != kind:
        loader = _LOADERS.get(found)
        raise ArtifactError(f"{directory}: a {found} artifact, not a {kind} one"
                            + (f"; load it with {loader}" if loader else ""))
    files = manifest.get("files") or {}
    if not isinstance(files, dict):
        raise ArtifactError(f"{manifest_path}: 'files' must map file names to sha256 checksums")
    for name in required:
        if name not in files:
            raise ArtifactError(f"{manifest_path}: no checksum for {name}; the manifest was edited")
    for name, expected in files.items():
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"{directory}: missing {name}")
        if file_sha256(file) != expected:
            raise ArtifactError(f"{file}: checksum mismatch - the file was changed or truncated after export")
    return manifest


@contextmanager
def loading_artifact(directory: Path, manifest: Mapping[str, Any], what: str, keys: Sequence[str]) -> Iterator[None]:
    """Check that ``manifest`` has ``keys`` and turn whatever building the ``what`` (router, scorer) from
    ``directory`` raises into an :class:`ArtifactError` that names the file, or the field missing."""
    try:
        for key in keys:
            manifest[key]  # noqa: B018 - presence check
        yield
    except KeyError as exc:
        raise ArtifactError(f"{directory / 'manifest.json'}: missing field {exc}") from exc
    except RouterMLError:
        raise
    except Exception as exc:  # onnxruntime / tokenizers reject a broken file with many types
        raise ArtifactError(f"{directory}: cannot load the {what} ({type(exc).__name__}: {exc})") from exc


def _check_session_arguments(session_options: Any, providers: Any, intra_op_threads: Any) -> None:
    """The session's options by type, before the artifact is read: a mistake here is the caller's, not the
    artifact's (it was an ArtifactError "cannot load the router", and a string of providers was split into
    characters, each an onnxruntime warning)."""
    if intra_op_threads is not None and (not is_whole(intra_op_threads) or intra_op_threads < 0):
        raise TypeError(f"intra_op_threads must be a whole number >= 0 (0: onnxruntime's default) or None, got "
                        f"{intra_op_threads!r}")
    if providers is not None and (isinstance(providers, str) or not isinstance(providers, Sequence) or not all(
            isinstance(p, str) or (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                   and isinstance(p[1], Mapping)) for p in providers)):
        raise TypeError(f"providers must be a list of onnxruntime providers - names, or (name, options) pairs, e.g. "
                        f"['CPUExecutionProvider'] - got {providers!r}")
    if session_options is not None:
        import onnxruntime as ort

        if not isinstance(session_options, ort.SessionOptions):
            raise TypeError(f"session_options must be an onnxruntime.SessionOptions, not "
                            f"{type(session_options).__name__}")


def onnx_session(path: Path, *, session_options: Any = None, intra_op_threads: int | None = None,
                 providers: Sequence[str] | None = None) -> Any:
    """An onnxruntime session of the graph at ``path`` (CPU unless ``providers`` says otherwise)."""
    import onnxruntime as ort

    options = session_options or ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = int(intra_op_threads)
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"]))


def resolve_artifact_path(path: str | Path) -> Path:
    """A local directory as is; an MLflow ``runs:/`` or ``models:/`` URI downloaded (a run, model or file the
    tracking server does not have is an :class:`ArtifactError` naming the URI and the server, not mlflow's
    traceback)."""
    text = str(path)
    if text.startswith(("runs:/", "models:/")):
        try:
            import mlflow
        except ImportError as exc:
            raise ArtifactError(f"loading {text} needs mlflow: pip install mlflow (or router-ml[train])") from exc
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
        except Exception as exc:  # MlflowException (no such run, model or path), OSError (the store)
            raise ArtifactError(f"{text}: cannot download it from the MLflow tracking server "
                                f"{mlflow.get_tracking_uri()} ({type(exc).__name__}: {exc}); check the run id or "
                                "model name and MLFLOW_TRACKING_URI") from exc
    return Path(path)


class Router:
    """A loaded router artifact. Build it with :meth:`load`."""

    #: padded tokens (rows x width) per onnxruntime call in batch scoring (see :meth:`_predict_prepared`):
    #: 1-2k kept the static graph's gathered rows in cache; 8k and 16k were 10-25% slower on 2 cores
    TOKEN_BUDGET = 2048

    def __init__(self, directory: Path, manifest: dict[str, Any], session: Any, tokenizer: Any,
                 fast_tokenizer: FastWordPiece | None = None):
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
        self.willingness_to_pay: float = wtp_from_json(wtp)
        self._input_names = [i.name for i in session.get_inputs()]
        self._output_names = [session.get_outputs()[0].name]
        self._nothing = np.zeros((1, 1), dtype=np.int64)  # the graph input of a prompt with no known token
        self._ones = np.ones((1, self._max_tokens + 2), dtype=np.int64)  # attention masks, sliced per prompt
        self._nothing.flags.writeable = self._ones.flags.writeable = False
        # each drop id as the fast tokenizer packs it: a memmem over its bytes skips the numpy check
        self._drop_packed = tuple(array(IDS_TYPECODE, [i]).tobytes() for i in self._drop if 0 <= i < 2**31)
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        # the exact pure-Python WordPiece (for ASCII text) only where it is exact: no special tokens
        self._fast = fast_tokenizer if not self._add_special else None
        self.exploration: Exploration | None = None
        self._explorer: Explorer | None = None
        self._set_costs(self.cost_model)

    def _set_costs(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model
        # (fixed, per input token) USD per model as Python floats: for a handful of models, plain
        # Python arithmetic is several times faster than numpy's per-call overhead, and bit-identical
        self._prices = tuple(zip(map(float, cost_model.fixed_usd), map(float, cost_model.per_input_token_usd),
                                 strict=True))
        self._policy = None  # the static part of policy_record(), rebuilt on the next call

    def policy_record(self, willingness_to_pay: float) -> dict[str, Any]:
        """What reproduces this router's decisions, for the decision log: the sha256 of ``router.onnx``
        (the manifest's checksum, verified at load), the knob, the exploration settings (None when off)
        and the prices in effect as ``{model: [fixed USD, USD per input token]}``."""
        if self._policy is None:
            self._policy = {"artifact_sha256": self.manifest["files"]["router.onnx"],
                            "exploration": None if self.exploration is None else self.exploration.to_dict(),
                            "prices": {m: list(p) for m, p in zip(self.models, self._prices, strict=True)}}
        return {**self._policy, "willingness_to_pay": wtp_to_json(willingness_to_pay)}

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, session_options: Any = None, providers: Sequence[str] | None = None,
             intra_op_threads: int | None = None, verify: bool = False,
             exploration: Exploration | None = None) -> Router:
        """Load and verify an artifact directory (or an MLflow ``runs:/`` / ``models:/`` URI).

        ``session_options`` is an ``onnxruntime.SessionOptions``; ``intra_op_threads`` is a shortcut
        for its thread count (1 is best for single-prompt latency); ``providers`` defaults to CPU.
        ``verify=True`` re-scores the artifact's parity sample (up to 256 prompts: well under a second
        for a static router, a few seconds for a 3-layer encoder) one prompt per call with this session and
        raises :class:`ArtifactError` - naming the share of changed routes, the limit and both CPUs -
        when the routes drift past the limit on this machine; ``router-ml serve`` always does it.
        ``exploration`` turns on exploration (:meth:`with_exploration`); the default is none.

        >>> router = Router.load("models/demo-artifact", verify=True)   # doctest: +SKIP
        """
        _check_session_arguments(session_options, providers, intra_op_threads)
        directory = resolve_artifact_path(path)
        manifest = read_artifact_manifest(directory, kind="router", required=_REQUIRED)
        with loading_artifact(directory, manifest, "router", ("models", "tokenizer", "policy")):
            from tokenizers import Tokenizer

            session = onnx_session(directory / "router.onnx", session_options=session_options,
                                   intra_op_threads=intra_op_threads, providers=providers)
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
            tokenizer.no_padding()
            tokenizer.no_truncation()
            fast = None
            if not manifest["tokenizer"]["add_special_tokens"]:
                fast = FastWordPiece.from_file(directory / "tokenizer.json")  # None unless exactly BERT WordPiece
            router = cls(directory, manifest, session, tokenizer, fast)
        outputs = session.get_outputs()[0].shape
        if outputs and isinstance(outputs[-1], int) and outputs[-1] != len(router.models):
            raise ArtifactError(f"{directory}: the graph scores {outputs[-1]} models but the manifest names "
                                f"{len(router.models)}")
        if verify:
            _, problem = check_sample(router)
            if problem:
                raise ArtifactError(problem)
        return router if exploration is None else router.with_exploration(exploration)

    # --- scoring ----------------------------------------------------------------------------

    @staticmethod
    def _read(text: str) -> str:
        """The prompt a text stands for, whole: the last string of the Python text of a list of strings
        (:func:`router_ml.messages.prompt_text`, as training reads RouterBench's cells), surrogates
        replaced. Its length prices the call (training's cost model counts the whole prompt too)."""
        if text[:1] == "[":
            text = prompt_text(text)
        if not text.isascii():  # ASCII has no lone surrogate: skip sanitize's UTF-8 encoding test
            text = sanitize(text)
        return text

    def _clip_chars(self, text: str) -> str:
        return text if len(text) <= self._max_chars else clip_chars(text, self._max_chars)

    def prepare_text(self, text: str) -> str:
        """The text the router reads of ``text``: the prompt it stands for (the last string of the Python
        text of a list of strings, :func:`router_ml.messages.prompt_text`), surrogates replaced, clipped
        to ``max_chars``. Costs are estimated on the prompt before the clip."""
        return self._clip_chars(self._read(text))

    def _prepare_all(self, texts: Sequence[str], what: str) -> list[str]:
        """The prompts read whole (:meth:`_read`): they price the calls; clipped, the graph reads them."""
        if isinstance(texts, str | bytes):
            raise TypeError(f"{what} takes a list of prompts; use route() for one")
        try:
            items = list(texts)
        except TypeError:
            raise TypeError(f"{what} takes a list of prompts, not {type(texts).__name__}") from None
        whole = []
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise TypeError(f"prompt {i} must be str, not {type(text).__name__}")
            whole.append(self._read(text))
        return whole

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` int64 arrays for one prompt (the graph's inputs)."""
        if not isinstance(text, str):
            raise TypeError(f"a prompt must be str, not {type(text).__name__}")
        ids = self._clip(self._token_array(self.prepare_text(text)))
        if not len(ids):  # nothing known: one masked-out token, i.e. an all-zero feature vector
            return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
        return ids, np.ones(len(ids), dtype=np.int64)

    def _drop_ids(self, ids: np.ndarray) -> np.ndarray:
        """Token rule 1: drop the manifest's ``drop_ids`` (``[UNK]`` for static routers)."""
        for dropped in self._drop:
            hit = ids == dropped
            if hit.any():
                ids = ids[~hit]
        return ids

    def _clip(self, ids: np.ndarray) -> np.ndarray:
        """Token rule 2: head + tail (:func:`router_ml.truncation.head_tail`, sliced on the array)."""
        inner = ids[1:-1] if self._add_special else ids  # special tokens around the text stay
        if len(inner) <= self._max_tokens:
            return ids
        tail = self._max_tokens - self._head
        kept = [inner[:self._head], inner[len(inner) - tail:] if tail else inner[:0]]
        return np.concatenate([ids[:1], *kept, ids[-1:]] if self._add_special else kept)

    def _token_array(self, text: str) -> np.ndarray:
        """The tokenizer's int64 ids of one prepared text, drop ids dropped: the exact fast path where it
        applies, else the library."""
        data = self._fast.encode_bytes(text) if self._fast is not None else None
        if data is not None:
            return self._from_packed(data)
        # encode_batch_fast skips offset tracking: about a third faster than encode() for one prompt
        ids = self._encode_batch([text], add_special_tokens=self._add_special)[0].ids
        return self._drop_ids(np.array(ids, dtype=np.int64))

    def _from_packed(self, data: bytes) -> np.ndarray:
        ids = np.frombuffer(data, dtype=np.intc)
        for packed in self._drop_packed:
            if packed in data:  # maybe at an unaligned offset: then the exact check finds nothing
                ids = self._drop_ids(ids)
                break
        return ids.astype(np.int64)

    def _token_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """:meth:`_token_array` of many prepared texts; those the fast path declines go to the library in one call."""
        packed = [self._fast.encode_bytes(t) for t in texts] if self._fast is not None else [None] * len(texts)
        out: list[Any] = [None if data is None else self._from_packed(data) for data in packed]
        slow = [i for i, data in enumerate(packed) if data is None]
        if slow:
            encoded = self._encode_batch([texts[i] for i in slow], add_special_tokens=self._add_special)
            for i, e in zip(slow, encoded, strict=True):
                out[i] = self._drop_ids(np.array(e.ids, dtype=np.int64))
        return out

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._session.run(self._output_names, {self._input_names[0]: ids, self._input_names[1]: mask})[0]

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), len(models))`` predicted quality in [0, 1]."""
        return self._predict_prepared([self._clip_chars(t) for t in self._prepare_all(texts, "predict")])[0]

    def _predict_prepared(self, prepared: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Scores and empty flags of prepared texts, in chunks of about :attr:`TOKEN_BUDGET` padded tokens.

        Rows are sorted by length and a chunk is cut where ``rows x width`` would pass the budget: a
        fixed row count pads a whole chunk to its longest prompt, and a large chunk's gathered
        ``(rows, width, dim)`` embeddings fall out of the CPU cache.
        """
        arrays = [self._clip(ids) for ids in self._token_arrays(prepared)]
        n = len(arrays)
        lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=n)
        empty = lengths == 0
        out = np.empty((n, len(self.models)), dtype=np.float32)
        if not n:
            return out, empty
        order = np.argsort(lengths, kind="stable")
        widths = np.maximum(lengths[order], 1)  # an empty prompt is one masked-out token
        flat = np.concatenate([arrays[i] for i in order.tolist()])
        offsets = np.concatenate([[0], np.cumsum(lengths[order])])
        start = 0
        while start < n:
            # widths are sorted, so rows x width grows with the chunk's end: the first end past the budget
            cost = np.arange(1, n - start + 1) * widths[start:]
            stop = start + max(1, int(np.searchsorted(cost, self.TOKEN_BUDGET, side="right")))
            width = int(widths[stop - 1])
            mask = np.arange(width) < lengths[order[start:stop], None]
            ids = np.zeros(mask.shape, dtype=np.int64)
            ids[mask] = flat[offsets[start]:offsets[stop]]  # row-major fill: each row's ids, then padding
            out[order[start:stop]] = self._run(ids, mask.astype(np.int64))
            start = stop
        return out, empty

    # --- deciding ---------------------------------------------------------------------------

    def with_prices(self, prices: PriceCatalog, expected_output_tokens: Mapping[str, float] | float) -> Router:
        """A router that prices calls with a new catalog - no retraining for a price change.
        ``expected_output_tokens``: per model (a mapping), or one number for every model."""
        if is_number(expected_output_tokens):
            expected_output_tokens = dict.fromkeys(self.models, float(expected_output_tokens))
        elif not isinstance(expected_output_tokens, Mapping):
            raise TypeError(f"expected_output_tokens: a number or a mapping of model to tokens, not "
                            f"{type(expected_output_tokens).__name__}")
        clone = self._copy()
        clone._set_costs(CostModel.from_prices(prices, self.models, dict(expected_output_tokens)))
        return clone

    def with_exploration(self, exploration: Exploration | None) -> Router:
        """A router that explores with ``exploration`` (None: never); this one is left alone, since
        routers are shared by threads. The copy owns a fresh RNG seeded with ``exploration.seed``.

        >>> explorer = router.with_exploration(Exploration("epsilon", rate=0.05, seed=7))  # doctest: +SKIP
        >>> explorer.route("Hi").propensity                                                # doctest: +SKIP
        0.96
        """
        if exploration is not None and not isinstance(exploration, Exploration):
            raise TypeError(f"exploration must be an Exploration or None, not {type(exploration).__name__}")
        clone = self._copy()
        clone.exploration = exploration
        clone._explorer = None if exploration is None else Explorer(exploration, self.models)
        clone._policy = None
        return clone

    def _copy(self) -> Router:
        """A shallow copy sharing the session and tokenizer (both safe to share between threads), so that
        the knob and prices of the copy change without touching a router other threads use. The copy gets
        its own exploration RNG, restarted from the seed."""
        clone = object.__new__(Router)
        clone.__dict__.update(self.__dict__)
        if self.exploration is not None:
            clone._explorer = Explorer(self.exploration, self.models)
        return clone

    def costs(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, models)`` expected USD cost of calling each model on each prompt (its whole length, not
        the part the router reads)."""
        return self.cost_model.estimate(estimate_input_tokens(self._prepare_all(texts, "costs")))

    @staticmethod
    def _check_wtp(willingness_to_pay: float | None, default: float) -> float:
        if willingness_to_pay is None:
            wtp = default
        elif type(willingness_to_pay) is not float and not is_number(willingness_to_pay):
            raise TypeError(f"willingness_to_pay must be a number >= 0 USD per unit of quality (or None for the "
                            f"router's default), not {type(willingness_to_pay).__name__}")
        else:
            wtp = float(willingness_to_pay)
        if not wtp >= 0:
            raise ValueError(f"willingness_to_pay must be >= 0 USD per unit of quality, got {willingness_to_pay}")
        return wtp

    def route_batch(self, texts: Sequence[str], *, willingness_to_pay: float | None = None) -> list[Decision]:
        """Decide for many prompts; ``willingness_to_pay`` (USD per unit quality) overrides the default."""
        wtp = self._check_wtp(willingness_to_pay, self.willingness_to_pay)
        whole = self._prepare_all(texts, "route_batch")
        scores, empties = self._predict_prepared([self._clip_chars(t) for t in whole])
        costs = self.cost_model.estimate(estimate_input_tokens(whole))
        chosen = choose(scores, costs, wtp).tolist()
        models, explorer = self.models, self._explorer
        # one .tolist() per matrix: Python floats for the dicts without a numpy call per prompt
        rows = zip(chosen, scores.tolist(), costs.tolist(), empties.tolist(), strict=True)
        if explorer is None:
            return [Decision(models[j], dict(zip(models, q, strict=True)), dict(zip(models, c, strict=True)), c[j],
                             wtp, e) for j, q, c, e in rows]
        out = []
        for g, q, c, e in rows:  # in prompt order, so a seeded router draws as route() would prompt by prompt
            j, p = explorer.draw(_utilities(q, c, wtp), c, g, q)
            out.append(Decision(models[j], dict(zip(models, q, strict=True)), dict(zip(models, c, strict=True)),
                                c[j], wtp, e, p, j != g))
        return out

    def route(self, text: str, *, willingness_to_pay: float | None = None) -> Decision:
        """Decide for one prompt (the same decision as ``route_batch([text])``, on a shorter path)."""
        wtp = self._check_wtp(willingness_to_pay, self.willingness_to_pay)
        if not isinstance(text, str):
            raise TypeError(f"a prompt must be str, not {type(text).__name__}")
        whole = self._read(text)
        ids = self._clip(self._token_array(self._clip_chars(whole)))
        n = len(ids)
        if n:
            scores = self._run(ids.reshape(1, n), self._ones[:, :n])
        else:  # nothing known: one masked-out token, i.e. an all-zero feature vector
            scores = self._run(self._nothing, self._nothing)
        scores = scores[0].tolist()
        tokens = (len(whole) + 3) // 4  # router_ml.policy.estimate_input_tokens, on the whole prompt
        costs = [fixed + tokens * per_token for fixed, per_token in self._prices]
        utility = _utilities(scores, costs, wtp)
        j = g = utility.index(max(utility))  # np.argmax's first index among equals, as choose()
        p = 1.0
        if self._explorer is not None:
            j, p = self._explorer.draw(utility, costs, g, scores)
        models = self.models
        return Decision(models[j], dict(zip(models, scores, strict=True)), dict(zip(models, costs, strict=True)),
                        costs[j], wtp, not n, p, j != g)

    def calibrate(self, prompts: Sequence[str], *, target_cost_per_request: float | None = None,
                  target_share: tuple[str, float] | None = None) -> Router:
        """A copy of this router whose default willingness to pay keeps, on ``prompts``, the mean
        expected cost per request at most ``target_cost_per_request`` USD, or the share of calls to
        model ``target_share[0]`` at most ``target_share[1]``. Bisection on a log scale.

        Like :meth:`with_prices` it returns a new router and leaves this one alone: a router may be
        shared by threads that must not see its default change under them.

        >>> cheap = router.calibrate(sample, target_cost_per_request=0.002)   # doctest: +SKIP
        >>> cheap.willingness_to_pay                                          # doctest: +SKIP
        0.0137
        """
        if (target_cost_per_request is None) == (target_share is None):
            raise ValueError("give exactly one of target_cost_per_request or target_share")
        if isinstance(prompts, str):
            raise TypeError("calibrate takes a list of sample prompts")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("calibrate needs at least one sample prompt")
        if target_share is not None:
            if not isinstance(target_share, tuple | list) or len(target_share) != 2:
                raise TypeError(f"target_share must be (model, share), got {target_share!r}")
            if target_share[0] not in self.models:
                raise ValueError(f"unknown model {target_share[0]!r}; the router's models are {list(self.models)}")
            _check_target("target_share's share", target_share[1], upper=1.0)
        else:
            _check_target("target_cost_per_request", target_cost_per_request)
        scores, costs = self.predict(prompts), self.costs(prompts)

        def measure(w: float) -> float:
            chosen = choose(scores, costs, w)
            if target_cost_per_request is not None:
                return float(costs[np.arange(len(chosen)), chosen].mean())
            return float(np.mean(chosen == self.models.index(target_share[0])))

        target = target_cost_per_request if target_cost_per_request is not None else target_share[1]
        calibrated = self._copy()
        calibrated.willingness_to_pay = self._knob_for(measure, target, float(np.max(costs)) or 1.0,
                                                       "target_cost_per_request" if target_share is None
                                                       else "target_share")
        return calibrated

    @staticmethod
    def _knob_for(measure: Any, target: float, scale: float, name: str) -> float:
        """The largest knob whose ``measure`` (non-decreasing in the knob) stays at most ``target``."""
        if measure(math.inf) <= target:
            return math.inf
        if measure(0.0) > target:
            raise ValueError(f"{name} {target} cannot be reached: even the cheapest choices give "
                             f"{measure(0.0)} on these prompts")
        low, high = scale * 1e-6, scale * 1e6
        if measure(low) > target:
            return 0.0  # only the cheapest-model end meets the target
        for _ in range(80):
            mid = math.sqrt(low * high)
            low, high = (mid, high) if measure(mid) <= target else (low, mid)
        return low


def _check_target(name: str, value: Any, upper: float = math.inf) -> None:
    """A calibration target is a finite number in [0, upper] (a NaN once gave a knob that routed everything to
    the cheapest model)."""
    if not is_number(value) or not 0 <= value <= upper \
            or math.isinf(value):
        rule = "in [0, 1]" if upper == 1.0 else ">= 0 USD"
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")


def _utilities(scores: list[float], costs: list[float], wtp: float) -> list[float]:
    """The utility of :func:`router_ml.policy.choose` for one prompt in plain Python: the same float64
    values, the same tie-break toward the cheaper model (its argmax, first index among equals, is the choice)."""
    top = max(costs)
    scale = top if top > 0 else 1.0
    if wtp == 0:
        utility = [-c for c in costs]
    elif math.isinf(wtp):
        utility = [q - c / scale * 1e-9 for q, c in zip(scores, costs, strict=True)]
    else:
        utility = [q - c / wtp - c / scale * 1e-9 for q, c in zip(scores, costs, strict=True)]
    return utility


def _choose_one(scores: list[float], costs: list[float], wtp: float) -> int:
    """:func:`router_ml.policy.choose` for one prompt in plain Python (the argmax of :func:`_utilities`)."""
    utility = _utilities(scores, costs, wtp)
    return utility.index(max(utility))
