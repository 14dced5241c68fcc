"""The answer scorer's runtime: P(an answer is good) for a cascade, with numpy, onnxruntime and tokenizers.

>>> from router_ml import AnswerScorer
>>> scorer = AnswerScorer.load("models/scorer/artifact")                            # doctest: +SKIP
>>> scorer.score("What is 2 + 2?", "gemini-1.5-flash-002", "2 + 2 = 4. The answer is (B).")  # doctest: +SKIP
0.91

A cascade calls a cheap model, scores its answer and escalates when the score is below a
threshold. The artifact is a router artifact's sibling (``manifest.json`` with ``kind: "scorer"``,
format version, sha256 of every file, the parity sample), built by ``router-ml train`` with a
``[scorer]`` config. Its graph gives one probability per model column for a (prompt, response) pair;
:meth:`AnswerScorer.score` reads the answering model's column. Two kinds:

- ``static``: inputs ``prompt_ids``/``prompt_mask``, ``response_ids``/``response_mask`` (static
  embedding ids, head + tail of each text, the response keeping its end) and ``features`` (the
  answer features of :mod:`router_ml._answer_inputs`);
- ``encoder``: ``input_ids``/``attention_mask`` of ``[CLS] prompt [SEP] response [SEP]`` cut by
  :func:`router_ml._answer_inputs.pair_ids`.

Loading refuses a router artifact (and :meth:`Router.load <router_ml.Router.load>` refuses a scorer's).
One ``AnswerScorer`` may be shared by threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_ml._answer_inputs import ANSWER_FEATURES, ANSWER_FEATURES_VERSION, TextTokens, answer_features, pair_ids
from router_ml.formats import VERSION_FIELD, read_versioned
from router_ml.router import (
    ArtifactError,
    loading_artifact,
    onnx_session,
    read_artifact_manifest,
    resolve_artifact_path,
)

__all__ = ["SCORER_GRAPH", "SCORER_PARITY_FORMAT", "SCORER_PARITY_VERSION", "AnswerScorer"]

SCORER_GRAPH = "scorer.onnx"
SCORER_PARITY_FORMAT = "router-ml-scorer-parity-sample"
SCORER_PARITY_VERSION = 1
_REQUIRED = (SCORER_GRAPH, "tokenizer.json")
#: pairs per onnxruntime call in :meth:`AnswerScorer.score_many` (sorted by length, padded per chunk)
_CHUNK = 64


class AnswerScorer:
    """A loaded answer-scorer artifact. Build it with :meth:`load`."""

    def __init__(self, directory: Path, manifest: dict[str, Any], session: Any, tokens: TextTokens):
        self.directory = directory
        self.manifest = manifest
        self.kind: str = manifest["scorer"]
        self.models: tuple[str, ...] = tuple(manifest["models"])
        self._column = {m: j for j, m in enumerate(self.models)}
        self._session = session
        self._tokens = tokens
        self._limits = manifest["tokenizer"]
        self._input_names = [i.name for i in session.get_inputs()]
        self._output = [session.get_outputs()[0].name]

    @classmethod
    def load(cls, path: str | Path, *, providers: Sequence[str] | None = None, intra_op_threads: int | None = None,
             session_options: Any = None, verify: bool = False) -> AnswerScorer:
        """Load and verify a scorer artifact directory (or an MLflow ``runs:/`` / ``models:/`` URI).

        Checks the format version, ``kind: "scorer"``, every file's sha256 and the answer features'
        version; ``verify=True`` also re-scores the stored parity sample here and raises
        :class:`~router_ml.ArtifactError` when a score moves by more than the export's tolerance.

        >>> scorer = AnswerScorer.load("models/scorer/artifact", intra_op_threads=2)  # doctest: +SKIP
        """
        directory = resolve_artifact_path(path)
        manifest = read_artifact_manifest(directory, kind="scorer", required=_REQUIRED)
        where = directory / "manifest.json"
        features = manifest.get("answer_features")
        if features and (features.get("version") != ANSWER_FEATURES_VERSION or features.get("names") !=
                         list(ANSWER_FEATURES)):
            raise ArtifactError(f"{where}: answer features version {features.get('version')!r}; this router-ml "
                                f"computes version {ANSWER_FEATURES_VERSION} - upgrade router-ml or re-export")
        with loading_artifact(directory, manifest, "scorer", ("models", "tokenizer", "scorer")):
            session = onnx_session(directory / SCORER_GRAPH, session_options=session_options,
                                   intra_op_threads=intra_op_threads, providers=providers)
            limits = manifest["tokenizer"]
            tokens = TextTokens(directory / "tokenizer.json", drop_ids=limits.get("drop_ids") or [],
                                max_chars=int(limits["max_chars"]))
            scorer = cls(directory, manifest, session, tokens)
        if scorer.kind not in ("static", "encoder"):
            raise ArtifactError(f"{where}: unknown scorer kind {scorer.kind!r}; upgrade router-ml")
        if verify:
            scorer.check_parity_sample()
        return scorer

    # --- inputs ------------------------------------------------------------------------------

    def _pair(self, prompt: str, response: str) -> tuple[list[int], ...]:
        """The token id lists of one pair: (prompt, response) for a static scorer, (pair,) for an encoder."""
        t, limits = self._tokens, self._limits
        if self.kind == "static":
            return (t.ids(prompt, max_tokens=limits["max_tokens"], head=limits["head"]),
                    t.ids(response, max_tokens=limits["max_tokens"], head=limits["response_head"]))
        return (pair_ids(t.ids(prompt), t.ids(response), max_length=limits["max_length"],
                         prompt_tokens=limits["prompt_tokens"], cls_id=limits["cls_id"], sep_id=limits["sep_id"]),)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's inputs for a batch of pairs (ids padded to the longest, masks zero there; a text
        with no known token is one masked-out id, i.e. an all-zero embedding)."""
        pairs = [self._pair(p, r) for p, r in zip(prompts, responses, strict=True)]
        arrays = []
        for part in range(len(pairs[0]) if pairs else 0):
            width = max(1, max(len(p[part]) for p in pairs))
            ids = np.zeros((len(pairs), width), dtype=np.int64)
            mask = np.zeros((len(pairs), width), dtype=np.int64)
            for k, p in enumerate(pairs):
                ids[k, :len(p[part])] = p[part]
                mask[k, :len(p[part])] = 1
            arrays += [ids, mask]
        if self.kind == "static" and self.manifest.get("answer_features"):
            feats = np.asarray([answer_features(p, r) for p, r in zip(prompts, responses, strict=True)],
                               dtype=np.float32).reshape(len(pairs), len(ANSWER_FEATURES))
            arrays.append(feats)
        return dict(zip(self._input_names, arrays, strict=True))

    def _check(self, prompt: Any, model: Any, response: Any, where: str) -> int:
        if not isinstance(prompt, str):
            raise TypeError(f"{where}prompt must be str, not {type(prompt).__name__}")
        if not isinstance(response, str):
            raise TypeError(f"{where}response for model {model!r} must be str (the model's answer text), "
                            f"not {type(response).__name__}")
        column = self._column.get(model)
        if column is None:
            raise ValueError(f"{where}unknown model {model!r}; this scorer scores {list(self.models)}")
        return column

    # --- scoring -----------------------------------------------------------------------------

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``(n, models)``: every model column's P(quality) for each pair (the graph's raw output)."""
        if not len(prompts):
            return np.zeros((0, len(self.models)), dtype=np.float32)
        return self._session.run(self._output, self.encode(prompts, responses))[0]

    def score(self, prompt: str, model: str, response: str) -> float:
        """P(``response``, ``model``'s answer to ``prompt``, is good), in [0, 1]."""
        column = self._check(prompt, model, response, "")
        return float(self.scores([prompt], [response])[0, column])

    def score_many(self, prompts: Sequence[str], models: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """:meth:`score` of many triples, as a float64 array; pairs go to onnxruntime in chunks of
        similar length.

        >>> scorer.score_many(["Q1", "Q2"], ["m1", "m2"], ["A1", "A2"])   # doctest: +SKIP
        array([0.81, 0.12])
        """
        if isinstance(prompts, str) or isinstance(responses, str):
            raise TypeError("score_many takes lists of prompts, models and responses; use score() for one")
        if not len(prompts) == len(models) == len(responses):
            raise ValueError(f"score_many needs as many models and responses as prompts, got {len(prompts)} "
                             f"prompts, {len(models)} models, {len(responses)} responses")
        triples = enumerate(zip(prompts, models, responses, strict=True))
        columns = np.array([self._check(p, m, r, f"triple {i}: ") for i, (p, m, r) in triples], dtype=np.int64)
        out = np.zeros(len(prompts))
        order = np.argsort([len(r) + len(p) for p, r in zip(prompts, responses, strict=True)], kind="stable")
        for start in range(0, len(order), _CHUNK):
            pick = order[start:start + _CHUNK]
            got = self.scores([prompts[i] for i in pick], [responses[i] for i in pick])
            out[pick] = got[np.arange(len(pick)), columns[pick]]
        return out

    def check_parity_sample(self) -> float:
        """Re-score the artifact's parity sample here; return the largest difference or raise
        :class:`~router_ml.ArtifactError` when it passes the tolerance stored with it."""
        info = self.manifest.get("parity_sample")
        if not info:
            raise ArtifactError(f"{self.directory}: no parity sample to verify against; re-export the scorer")
        doc = read_versioned(self.directory / info["file"], what="scorer parity sample", fmt=SCORER_PARITY_FORMAT,
                             version=SCORER_PARITY_VERSION, fix="re-export the scorer", error=ArtifactError)
        triples = doc["triples"]
        got = self.score_many([t["prompt"] for t in triples], [t["model"] for t in triples],
                              [t["response"] for t in triples])
        diff = float(np.max(np.abs(got - np.array([t["score"] for t in triples])), initial=0.0))
        if diff > doc["tolerance"]:
            raise ArtifactError(f"{self.directory}: scores of the parity sample moved by {diff:.2e} on this machine "
                                f"(tolerance {doc['tolerance']}); re-export the scorer here")
        return diff


def parity_document(triples: list[dict[str, Any]], scores: np.ndarray, tolerance: float) -> dict[str, Any]:
    """The ``parity_sample.json`` payload the exporter writes (see :meth:`AnswerScorer.check_parity_sample`)."""
    return {"format": SCORER_PARITY_FORMAT, VERSION_FIELD: SCORER_PARITY_VERSION, "tolerance": tolerance,
            "triples": [{**t, "score": float(s)} for t, s in zip(triples, scores, strict=True)]}
