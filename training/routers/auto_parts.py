"""The auto router's held-out predictions: every candidate fitted on each part of the training pool.

A part is a cross-validation fold (train + validation, ``router.cv_folds`` of them, every record scored
once) or the train split scored on the validation split; :class:`CandidateParts` decides which candidates
are tried (and why one is skipped), fits each part's independent tasks - each candidate family and each
group field's estimate - on worker processes where they pay (:func:`~training.parallel.ordered_map`) and
collects each variant's (family, hyperparameter) predictions on the scored records. What is done with
them - scores, the choice, blends and the final head - is :mod:`training.routers.auto`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from router_ml.errors import RouterMLError
from training.parallel import ordered_map, workers_for
from training.routers.auto_encoder import encoder_candidate_config, encoder_skipped, fit_encoder
from training.routers.auto_groups import blended, group_fields_to_try
from training.routers.baselines import LogRegRouter
from training.routers.heads import KNNHead, fit_logreg
from training.routers.lexical import fitted_columns, lexical_featurizer, tfidf, token_counts
from training.routers.neural import EncoderRouter, GroupFit, MFRouter, MLPRouter, TorchRouter
from training.trainer import Batchable

if TYPE_CHECKING:
    from training.routers.auto import AutoRouter

__all__ = ["MIN_VALIDATION", "TUNE_ONLY_IMPUTED_SHARE", "CandidateParts", "early_stopping_split", "grid_values",
           "member_config", "one_thread"]

#: no candidate is picked on fewer validation prompts than this without cross-validation
MIN_VALIDATION = 100
#: where at least this share of the pool's cells are imputed (completed logged records), held-out scores
#: only tune each candidate and decide one thing (no Platt scaling, no group blend;
#: :meth:`training.routers.auto._Selection.run`)
TUNE_ONLY_IMPUTED_SHARE = 0.1
_TORCH = {"mlp": MLPRouter, "mf": MFRouter, "groups": MLPRouter}
log = logging.getLogger("router_ml.train")


def member_config(config, kind: str, **overrides: Any):
    """The config of an MLP or MF the auto router fits for itself (a candidate, a first stage, a distilled
    student): that kind, no group field and nothing of the auto router's own (``router.distill``)."""
    return config.replace(**{"router.kind": kind, "router.groups": "", "router.distill": False, **overrides})


def early_stopping_split(rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` split into (the rest, a seeded tenth to early-stop on), each sorted."""
    shuffled = np.random.default_rng(seed + 1).permutation(rows)
    cut = max(1, len(rows) // 10)
    return np.sort(shuffled[cut:]), np.sort(shuffled[:cut])


def grid_values(values: tuple[str, ...], cast) -> list:
    """A config's hyperparameter grid (strings, as TOML holds them) cast to ``cast``."""
    return [cast(float(v)) for v in values]


@contextlib.contextmanager
def one_thread(config):
    """torch and the BLAS/OpenMP pools (scikit-learn's group classifier) on ``train.threads`` threads, 1 by
    default: these small problems gain nothing from a second thread and lose up to 4x on a loaded
    machine (a logistic regression on MMLU-Pro: 29 s on one thread, 118 s on two, beside other jobs)."""
    from threadpoolctl import threadpool_limits

    threads = config.train.threads or 1
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(previous)


def _run_task(selection: CandidateParts, task: tuple[str, Any], fit: np.ndarray, score: np.ndarray):
    """:meth:`_Selection._task` in a worker process, on the threads the selection's own process uses."""
    with one_thread(selection.config):
        return selection._task(task, fit, score)


class CandidateParts:
    """The first half of a selection (:class:`training.routers.auto._Selection`): which candidates are
    tried, the parts they are fitted on (cross-validation folds, or the train split scored on validation)
    and every candidate variant's held-out predictions, fitted part by part on worker processes."""

    #: what a worker process running :meth:`_task` on a cross-validation part does not need (and the
    #: progress callback cannot be pickled)
    _NOT_PICKLED = ("router", "train", "val", "on_epoch", "texts", "_tokens", "mixtures", "fitted", "_final_torch",
                    "_pool_groups", "winner", "heldout", "featurizer")

    def __getstate__(self) -> dict[str, Any]:
        return {k: (None if k in self._NOT_PICKLED else v) for k, v in self.__dict__.items()}

    def __init__(self, router: AutoRouter, train: Batchable, val: Batchable | None, wtp_range, on_epoch):
        self.router, self.config, self.r = router, router.config, router.config.router
        self.n_models, self.input_dim = router.n_models, router.input_dim
        self.train, self.val, self.wtp_range, self.on_epoch = train, val, wtp_range, on_epoch
        self.pool = train.concat(val)
        self.n = len(self.pool)
        self.seed = self.config.data.seed
        n_val = 0 if val is None else len(val)
        self.cv = self.n < self.r.cv_below or n_val < MIN_VALIDATION
        self.families = [c for c in self.r.candidates if c != "ensemble"]
        default_field = self.r.auto_groups[0] if self.r.auto_groups else "task"
        self.group_fields = (group_fields_to_try(self.pool.groups, default_field) if "groups" in self.r.candidates
                             else {})
        if "groups" in self.families:  # fitted last: it blends the MLP fitted in the same part
            self.families.remove("groups")
            if self.group_fields:
                self.families.append("groups")
        #: per group field, each held-out record's group estimate p(g | x) @ Q, fitted on its part's records
        self.mixtures = {f: np.full(self.pool.quality.shape, np.nan) for f in self.group_fields}
        self._final_torch: dict[str, TorchRouter] = {}
        self._pool_groups: dict[str, GroupFit] = {}  # each field's group estimate fitted on the whole pool
        self.skipped: dict[str, str] = {}
        self.texts = getattr(router, "texts_", None)
        if "encoder" in self.families:
            reason = encoder_skipped(self.config, self.n, self.texts is not None and self.pool.rows is not None)
            if reason:
                self.families.remove("encoder")
                self.skipped["encoder"] = reason
                log.info("auto: encoder candidate skipped: %s", reason)
            else:
                self.encoder_config = encoder_candidate_config(self.config)
        self._counts = None
        self.featurizer = lexical_featurizer(self.config) if "lexical" in self.families else None
        if "lexical" in self.families:
            reason = self._lexical_skipped()
            if reason:
                self.families.remove("lexical")
                self.skipped["lexical"] = reason
                log.info("auto: lexical candidate skipped: %s", reason)
        self._check_left()
        self.fitted: dict[str, TorchRouter] = {}
        self.seconds: dict[str, float] = {}
        self.winner: EncoderRouter | None = None
        self.heldout: tuple[np.ndarray, np.ndarray] | None = None
        self._X: np.ndarray | None = None
        self._tokens: Batchable | None = None

    def _check_left(self) -> None:
        """Before any fit: a candidate left to fit, and ``router.auto_pick`` among them (a pinned candidate that
        was skipped was once passed over without a word, and none left was a traceback after the features)."""
        skipped = dict(self.skipped)
        if "groups" in self.r.candidates and not self.group_fields:
            skipped["groups"] = "the records name no group field with at least two groups"
        why = "; ".join(f"{c}: {reason}" for c, reason in skipped.items())
        if not self.families:
            raise RouterMLError(f"router.kind = auto: every candidate in router.candidates was skipped ({why}); add "
                                "mlp, logreg, knn or mf to router.candidates")
        pick = self.r.auto_pick
        averaged = [f for f in self.families if f in self.r.ensemble_members]
        if pick in skipped or (pick == "ensemble" and len(averaged) < 2):
            reason = skipped.get(pick, "fewer than two candidates to average")
            raise RouterMLError(f"router.auto_pick = {pick!r}: that candidate is not fitted on this data ({reason}); "
                                f"pick one of {self.families} or leave router.auto_pick empty")

    def _lexical_skipped(self) -> str | None:
        """Why the ``lexical`` candidate is not tried here (None: it is)."""
        if self.n < self.r.lexical_min_records:
            return (f"{self.n} train + validation records (< router.lexical_min_records = "
                    f"{self.r.lexical_min_records}): too few for a weight per vocabulary token and model")
        if not self.cv:
            return (f"{self.n} train + validation records and a validation split of {len(self.val or [])} (not "
                    f"cross-validated: router.cv_below = {self.r.cv_below}); the sparse regressions are tried on "
                    "cross-validated data only")
        imputed = self.pool.imputed
        if (not self.r.lexical_on_logs and imputed is not None
                and float(imputed.mean()) >= TUNE_ONLY_IMPUTED_SHARE):
            return "completed logged records train the candidates and router.lexical_on_logs is false"
        if self.texts is None or self.pool.rows is None:
            return "the prompts' text is not at hand (train through the pipeline)"
        if self.featurizer is None:
            return (f"featurizer.name = {self.config.featurizer.name!r}: the lexical regression reads the static "
                    "featurizer's token ids, the ones its exported graph receives")
        return None

    @property
    def counts(self):
        """The pool's sparse token counts (:func:`~training.routers.lexical.token_counts`)."""
        if self._counts is None:
            self._counts = token_counts(self.featurizer, [self.texts[int(i)] for i in self.pool.rows])
        return self._counts

    @property
    def tokens(self) -> Batchable:
        """The pool with the encoder's ``(input_ids, attention_mask)`` of its prompts as inputs."""
        if self._tokens is None:
            texts = [self.texts[int(i)] for i in self.pool.rows]
            ids = EncoderRouter(config=self.encoder_config, n_models=self.router.n_models).tokenize(texts)
            self._tokens = dataclasses.replace(self.pool, inputs=ids, rows=None)
        return self._tokens

    def _fit_encoder(self, fit: Batchable, stop: Batchable | None) -> EncoderRouter:
        return self._timed("encoder", lambda: fit_encoder(self.encoder_config, self.router.n_models, fit, stop,
                                                          self.wtp_range))

    def _early_stopping(self, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A CV fold's training part split into (rest, a tenth for early stopping), seeded."""
        return early_stopping_split(fit, self.seed)

    def _split_parts(self) -> tuple[np.ndarray, np.ndarray]:
        """The pool positions of the train and validation splits."""
        return np.arange(len(self.train)), np.arange(len(self.train), self.n)

    @property
    def X(self) -> np.ndarray:
        """The pool's features in memory (logistic regression and kNN read them whole)."""
        if self._X is None:
            self._X = np.asarray(self.pool.input_rows(np.arange(self.n))[0], dtype=np.float32)
        return self._X

    def _parts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if not self.cv:
            return [(np.arange(len(self.train)), np.arange(len(self.train), self.n))]
        folds = min(self.r.cv_folds, self.n)
        order = np.random.default_rng(self.seed).permutation(self.n)
        return [(np.sort(np.setdiff1d(order, order[k::folds])), np.sort(order[k::folds])) for k in range(folds)]

    def _torch_config(self, family: str):
        """An MLP (``mlp``, and ``groups``'s base: its group blend is added by :class:`GroupFit`) or MF config."""
        kind = "mf" if family == "mf" else "mlp"
        return member_config(self.config, kind)

    def _fit_torch(self, family: str, fit: Batchable, stop: Batchable | None, on_epoch=None) -> TorchRouter:
        router = _TORCH[family](config=self._torch_config(family), n_models=self.n_models, input_dim=self.input_dim)
        return router.fit(fit, stop, wtp_range=self.wtp_range, on_epoch=on_epoch)

    def _timed(self, family: str, fn):
        started = time.perf_counter()
        out = fn()
        self.seconds[family] = self.seconds.get(family, 0.0) + time.perf_counter() - started
        return out

    def _part_tasks(self) -> list[tuple[str, Any]]:
        """The independent fits of one part: each group field's estimate, then each candidate family but
        the encoder (fitted in this process, :meth:`_part_done`) and ``groups`` (the MLP's predictions
        blended with the group estimate; its own MLP only where ``mlp`` is not a candidate)."""
        tasks: list[tuple[str, Any]] = [("group estimate", field) for field in self.group_fields]
        for family in self.families:
            if family not in ("encoder", "groups") or (family == "groups" and "mlp" not in self.families):
                tasks.append((family, None))
        return tasks

    def _task(self, task: tuple[str, Any], fit: np.ndarray,
              score: np.ndarray) -> tuple[dict[tuple[str, Any], np.ndarray], float]:
        """One fit of a part (:meth:`_part_tasks`) on the pool's records ``fit``: its predictions for
        ``score`` by variant (a group field's estimate p(g | x) @ Q under ``("group estimate", field)``)
        and the seconds it took."""
        started = time.perf_counter()
        family, field = task
        X, Q = self.X, self.pool.quality
        out: dict[tuple[str, Any], np.ndarray] = {}
        if family == "group estimate":
            out[task] = GroupFit.fit(X[fit], Q[fit], self.group_fields[field][fit]).mixture(X[score])
        elif family in _TORCH:
            out[(family, None)] = self._fit_part(family, fit).predict(self.pool.input_rows(score))
        elif family == "logreg":
            head = None
            for c in sorted(grid_values(self.r.logreg_c, float)):  # each warm-starts from the stronger penalty's
                head = fit_logreg(X[fit], Q[fit], c, start=head, weights=self._weights(fit))
                with torch.no_grad():
                    out[(family, c)] = torch.sigmoid(head(torch.as_tensor(X[score]))).numpy()
        elif family == "knn":
            ks = grid_values(self.r.knn_k, int)
            grid = KNNHead(X[fit], Q[fit], max(ks), self._weights(fit),
                           dims=self.r.knn_dims).predict_grid(X[score], ks)
            out.update({(family, k): grid[k] for k in ks})
        elif family == "lexical":  # document frequencies from the part's training records only
            vectors, _ = tfidf(self.counts, fit)
            vectors = vectors[:, fitted_columns(vectors, fit)]
            for c in grid_values(self.r.lexical_c, float):
                fitted = LogRegRouter(C=c).fit(vectors[fit], Q[fit], weights=self._weights(fit))
                out[(family, c)] = fitted.predict(vectors[score])
        return out, time.perf_counter() - started

    def workers(self, tasks: int) -> int:
        """Processes fitting the parts' tasks (:func:`~training.parallel.workers_for`): only when
        cross-validating, below ``router.cv_below`` records, so the pickled parts stay small (a validation
        split is one part, fitted here)."""
        if not self.cv or self.n >= self.r.cv_below:
            return 1
        return workers_for(self.config.train.workers, self.n, tasks, self.config.train.threads)

    def _fit_parts(self, parts: list[tuple[np.ndarray, np.ndarray]], preds: dict[tuple[str, Any], np.ndarray]) -> None:
        """Every part's tasks, on :meth:`workers` processes; their predictions into ``preds`` (by
        variant) and :attr:`mixtures`, their seconds into :attr:`seconds`."""
        tasks = [(k, task) for k in range(len(parts)) for task in self._part_tasks()]
        workers = self.workers(len(tasks))
        if "lexical" in self.families:
            self.counts  # noqa: B018 - tokenized once here, not by each worker
        if workers > 1:
            self.X  # noqa: B018 - read once here, not by each worker
            log.info("auto: %d fits on %d worker processes", len(tasks), workers)
        per_part = len(tasks) // len(parts)
        results = ordered_map(_run_task, [(self, task, *parts[k]) for k, task in tasks], workers)
        for i, ((k, task), (out, seconds)) in enumerate(zip(tasks, results, strict=True)):
            score = parts[k][1]
            name = "group estimates" if task[0] == "group estimate" else task[0]
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            for variant, pred in out.items():  # ("groups", None): the groups candidate's own MLP
                target = (self.mixtures[variant[1]] if variant[0] == "group estimate" else
                          preds.setdefault(variant, np.full(self.pool.quality.shape, np.nan)))
                target[score] = pred
            if (i + 1) % per_part == 0:  # the part's last task
                self._part_done(k, parts, preds)
        if not tasks:  # the encoder alone
            for k in range(len(parts)):
                self._part_done(k, parts, preds)

    def _part_done(self, k: int, parts: list[tuple[np.ndarray, np.ndarray]],
                   preds: dict[tuple[str, Any], np.ndarray]) -> None:
        """What a part needs after its tasks: the encoder's fit and the group-informed blends."""
        fit, score = parts[k]
        if "encoder" in self.families:
            tokens = self.tokens
            if self.cv:
                rest, stop = self._early_stopping(fit)
                router = self._fit_encoder(tokens.take(rest), tokens.take(stop))
            else:
                router = self.fitted["encoder"] = self._fit_encoder(*self._split_tokens())
            preds[("encoder", None)][score] = router.predict(tokens.input_rows(score))
        if "groups" in self.families:  # the MLP of this part (trained exactly as the mlp candidate's)
            base = preds[("mlp" if "mlp" in self.families else "groups", None)][score]
            for field in self.group_fields:
                preds[("groups", field)][score] = blended(base, self.mixtures[field][score], self.r.group_weight)
        log.info("auto: part %d/%d fitted (%s)", k + 1, len(parts),
                 ", ".join(f"{f} {t:.0f}s" for f, t in self.seconds.items()))

    def _fit_part(self, family: str, fit: np.ndarray) -> TorchRouter:
        """A torch candidate fitted on the part ``fit`` (CV: early-stopped on a tenth of it) or on the
        train split, early-stopped on validation (kept for the final head)."""
        if self.cv:
            rest, stop = self._early_stopping(fit)
            return self._fit_torch(family, self.pool.take(rest), self.pool.take(stop))
        router = self._fit_torch(family, self.train, self.val, on_epoch=self.on_epoch if family == "mlp" else None)
        self.fitted[family] = router
        return router

    def _weights(self, rows: np.ndarray | None) -> np.ndarray | None:
        """The pool's per-cell loss weights (imputed cells weigh ``loss.imputed_weight``) of ``rows`` (None: all)."""
        w = self.pool.weights
        return None if w is None else (w if rows is None else w[rows])

    def _split_tokens(self) -> tuple[Batchable, Batchable | None]:
        train, val = self._split_parts()
        return self.tokens.take(train), self.tokens.take(val) if len(val) else None

    def _variants(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for family in self.families:
            if family == "logreg":
                out += [(family, c) for c in grid_values(self.r.logreg_c, float)]
            elif family == "lexical":
                out += [(family, c) for c in grid_values(self.r.lexical_c, float)]
            elif family == "knn":
                out += [(family, k) for k in grid_values(self.r.knn_k, int)]
            elif family == "groups":
                out += [(family, f) for f in self.group_fields]
            else:
                out.append((family, None))
        return out
