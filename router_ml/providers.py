"""Provider catalogs: where each candidate model is called, with what key, at what price, and what
to try when it fails.

A catalog is a TOML file (``data/demo/providers.toml`` is a complete example)::

    [settings]                              # all optional; the defaults are shown
    route_model = "router-ml"               # the model name clients send to be routed
    request_timeout_s = 60.0                # one request, all retries and fallbacks included
    max_retries = 1                         # retries of one model before falling back
    backoff_s = 0.05                        # first retry delay; doubles per retry, +-50% jitter
    max_backoff_s = 1.0
    max_retry_after_s = 5.0                 # a 429 asking for a longer wait falls back at once
    breaker_failures = 5                    # consecutive failures that open an upstream's circuit
    breaker_reset_s = 30.0                  # open for this long, then one probe request

    [models."small-8b"]
    base_url = "https://api.example.com/v1" # any OpenAI-compatible Chat Completions API
    provider_model = "org/small-8b-instruct"  # the provider's model id (default: the catalog name)
    api_key_env = "EXAMPLE_API_KEY"         # the NAME of the environment variable; never the key
    input_per_mtok = 0.2                    # USD per 1M tokens (cost accounting, routing prices)
    output_per_mtok = 0.4
    expected_output_tokens = 300            # optional: with it for every model, routing uses these prices
    timeout_s = 30.0                        # per attempt
    fallbacks = ["large-70b"]               # tried in order after this model fails

    [[models."large-70b".replicas]]         # weighted load balancing between copies of one model;
    base_url = "http://10.0.0.5:8000/v1"    # a replica inherits base_url, provider_model,
    weight = 3                              # api_key_env and timeout_s from its model

    [[rules]]                               # evaluated in order before the learned router
    name = "premium tier"
    header = "x-tier"                       # a request header (case-insensitive) ...
    equals = "premium"                      # ... equal to this (or: in = ["a", "b"]; neither: present)
    model = "frontier-xl"

    [[rules]]
    name = "code"
    regex = "```|\\bdef "                  # searched in the routed text (the last user message)
    model = "code-34b"

Loading validates everything and names the file and key of the first problem. API keys are read
from the environment once, at load, and are kept out of every ``repr``, error message and log.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from router_ml.errors import CatalogError
from router_ml.pricing import ModelPrice, PriceCatalog

__all__ = ["ProviderCatalog", "ProviderModel", "Replica", "Rule", "Settings", "is_loopback"]

_SETTINGS_KEYS = {"route_model", "request_timeout_s", "max_retries", "backoff_s", "max_backoff_s",
                  "max_retry_after_s", "breaker_failures", "breaker_reset_s"}
_REPLICA_KEYS = {"base_url", "provider_model", "api_key_env", "timeout_s", "weight"}
_MODEL_KEYS = {"base_url", "provider_model", "api_key_env", "timeout_s", "input_per_mtok", "output_per_mtok",
               "expected_output_tokens", "fallbacks", "replicas"}
_RULE_KEYS = {"name", "header", "equals", "in", "regex", "model"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Secret:
    """An API key: usable as a header value, invisible in ``repr``/``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    """Retry, fallback and circuit-breaker settings shared by every model of a catalog."""

    route_model: str = "router-ml"
    request_timeout_s: float = 60.0
    max_retries: int = 1
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    max_retry_after_s: float = 5.0
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0


@dataclass(eq=False)
class Replica:
    """One OpenAI-compatible endpoint serving a model. ``label`` (``model#index``) names it in metrics."""

    model: str
    label: str
    base_url: str
    provider_model: str
    api_key_env: str | None
    timeout_s: float
    weight: float
    api_key: _Secret | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"


@dataclass(eq=False)
class ProviderModel:
    """A candidate model: its replicas, prices and fallback chain."""

    name: str
    replicas: tuple[Replica, ...]
    price: ModelPrice
    expected_output_tokens: float | None
    fallbacks: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """A static rule: when it matches a request, its ``model`` is used and the learned router is skipped."""

    name: str
    model: str
    header: str | None = None
    values: frozenset[str] | None = None  # None: the header only has to be present
    regex: re.Pattern[str] | None = None

    def matches(self, text: str, headers: Mapping[str, str]) -> bool:
        if self.header is not None:
            value = headers.get(self.header)
            if value is None or (self.values is not None and value not in self.values):
                return False
        return self.regex is None or self.regex.search(text) is not None


class ProviderCatalog(Mapping[str, ProviderModel]):
    """A validated provider catalog: ``catalog[name]`` is a :class:`ProviderModel`.

    Build it with :meth:`load` (a TOML file) or from the parsed mapping (``source`` names it in errors).
    ``environ`` (default ``os.environ``) is where ``api_key_env`` variables are looked up.
    """

    def __init__(self, data: Mapping[str, Any], *, source: str = "<dict>",
                 environ: Mapping[str, str] | None = None):
        self.source = source
        env = os.environ if environ is None else environ
        if not isinstance(data, Mapping):
            raise CatalogError(f"{source}: a provider catalog is a table with [settings], [models.NAME], [[rules]]")
        unknown = set(data) - {"settings", "models", "rules"}
        if unknown:
            raise CatalogError(f"{source}: unknown top-level key(s) {sorted(unknown)}; expected [settings], "
                               f"[models.NAME] and [[rules]]")
        self.settings = self._settings(data.get("settings", {}))
        models = data.get("models")
        if not isinstance(models, Mapping) or not models:
            raise CatalogError(f"{source}: no models; add at least one [models.\"NAME\"] table with a base_url")
        self._models = {str(name): self._model(str(name), entry, env) for name, entry in models.items()}
        if self.settings.route_model in self._models:
            raise CatalogError(f"{source}: settings.route_model '{self.settings.route_model}' is also a model name; "
                               f"pick a name that no model has")
        for model in self._models.values():
            for j, target in enumerate(model.fallbacks):
                if target not in self._models:
                    raise CatalogError(f"{source}: models.'{model.name}'.fallbacks[{j}]: unknown model '{target}'; "
                                       f"the catalog has {sorted(self._models)}")
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            raise CatalogError(f"{source}: 'rules' must be an array of tables ([[rules]])")
        self.rules = tuple(self._rule(i, r) for i, r in enumerate(rules))
        self._secrets = tuple(r.api_key.reveal() for m in self._models.values() for r in m.replicas if r.api_key)

    # --- parsing -------------------------------------------------------------------------------

    def _fail(self, where: str, message: str) -> CatalogError:
        return CatalogError(f"{self.source}: {where}: {message}")

    def _number(self, table: Mapping[str, Any], key: str, where: str, *, default: Any = None, minimum: float = 0.0,
                strict: bool = False, integer: bool = False) -> Any:
        value = table.get(key, default)
        if value is None:
            return None
        bad = isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int))
        if bad or not math.isfinite(value) or value < minimum or (strict and value == minimum):
            kind = "an integer" if integer else "a number"
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise self._fail(f"{where}.{key}", f"must be {kind} {bound}, got {value!r}")
        return value if integer else float(value)

    def _check_keys(self, table: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
        if not isinstance(table, Mapping):
            raise self._fail(where, f"must be a table, got {type(table).__name__}")
        unknown = set(table) - allowed
        if unknown:
            raise self._fail(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return table

    def _settings(self, raw: Any) -> Settings:
        t = self._check_keys(raw, _SETTINGS_KEYS, "settings")
        d = Settings()
        route_model = t.get("route_model", d.route_model)
        if not isinstance(route_model, str) or not route_model:
            raise self._fail("settings.route_model", f"must be a non-empty string, got {route_model!r}")
        return Settings(
            route_model=route_model,
            request_timeout_s=self._number(t, "request_timeout_s", "settings", default=d.request_timeout_s,
                                           strict=True),
            max_retries=self._number(t, "max_retries", "settings", default=d.max_retries, integer=True),
            backoff_s=self._number(t, "backoff_s", "settings", default=d.backoff_s),
            max_backoff_s=self._number(t, "max_backoff_s", "settings", default=d.max_backoff_s),
            max_retry_after_s=self._number(t, "max_retry_after_s", "settings", default=d.max_retry_after_s),
            breaker_failures=self._number(t, "breaker_failures", "settings", default=d.breaker_failures,
                                          minimum=1, integer=True),
            breaker_reset_s=self._number(t, "breaker_reset_s", "settings", default=d.breaker_reset_s, strict=True),
        )

    def _base_url(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self._fail(f"{where}.base_url", "missing: give the OpenAI-compatible API root, "
                             "e.g. \"https://api.openai.com/v1\" or \"http://127.0.0.1:8000/v1\"")
        root = "give the API root, e.g. \"http://host:port/v1\""
        try:
            parts = urlsplit(value)
            port = parts.port  # raises on a port that is not a number in 0-65535
        except ValueError as exc:  # "Port out of range", "Invalid IPv6 URL", ...
            raise self._fail(f"{where}.base_url", f"not a valid URL ({exc}): {value!r}; {root}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._fail(f"{where}.base_url", f"must be an http(s) URL with a host, got {value!r}; {root}")
        if port == 0:
            raise self._fail(f"{where}.base_url", f"port 0 is no port to call: {value!r}; {root}")
        if parts.username or parts.password:
            raise self._fail(f"{where}.base_url", "must not hold credentials; put the key in an environment "
                             "variable and name it in api_key_env")
        if parts.query or parts.fragment:
            raise self._fail(f"{where}.base_url", "must not have a query or fragment")
        if parts.path.rstrip("/").endswith("/chat/completions"):  # the client adds it: every call would 404
            raise self._fail(f"{where}.base_url", f"ends in /chat/completions, which router-ml adds itself: {value!r}; "
                             f"{root} (without /chat/completions)")
        return value.rstrip("/")

    def _api_key(self, name: Any, where: str, env: Mapping[str, str]) -> _Secret | None:
        if name is None:
            return None
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise self._fail(f"{where}.api_key_env", "must be the NAME of an environment variable (letters, digits, "
                             "_), not the key itself")
        value = env.get(name)
        if not value:
            raise self._fail(f"{where}.api_key_env", f"environment variable {name} is not set; export it before "
                             f"starting (or drop api_key_env for a provider that needs no key)")
        return _Secret(value)

    def _model(self, name: str, raw: Any, env: Mapping[str, str]) -> ProviderModel:
        where = f"models.'{name}'"
        t = self._check_keys(raw, _MODEL_KEYS, where)
        prices = []
        for key in ("input_per_mtok", "output_per_mtok"):
            if key not in t:
                raise self._fail(f"{where}.{key}", "missing: the price in USD per 1M tokens (0 for a free model)")
            prices.append(self._number(t, key, where))
        expected = self._number(t, "expected_output_tokens", where)
        fallbacks = t.get("fallbacks", [])
        if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
            raise self._fail(f"{where}.fallbacks", "must be a list of model names")
        if name in fallbacks:
            raise self._fail(f"{where}.fallbacks", "a model cannot fall back to itself")
        if len(set(fallbacks)) != len(fallbacks):
            raise self._fail(f"{where}.fallbacks", f"lists a model twice: {fallbacks}")
        provider_model = t.get("provider_model", name)
        if not isinstance(provider_model, str) or not provider_model:
            raise self._fail(f"{where}.provider_model", f"must be a non-empty string, got {provider_model!r}")
        timeout = self._number(t, "timeout_s", where, default=30.0, strict=True)
        raw_replicas = t.get("replicas")
        if raw_replicas is None:
            raw_replicas = [{}]
            if "base_url" not in t:
                raise self._fail(f"{where}.base_url", "missing: give base_url or [[models.'NAME'.replicas]]")
        if not isinstance(raw_replicas, list) or not raw_replicas:
            raise self._fail(f"{where}.replicas", "must be a non-empty array of tables")
        replicas = []
        for i, rep in enumerate(raw_replicas):
            rwhere = f"{where}.replicas[{i}]" if "replicas" in t else where
            r = self._check_keys(rep, _REPLICA_KEYS, rwhere)
            rpm = r.get("provider_model", provider_model)
            if not isinstance(rpm, str) or not rpm:
                raise self._fail(f"{rwhere}.provider_model", f"must be a non-empty string, got {rpm!r}")
            replicas.append(Replica(
                model=name, label=f"{name}#{i}",
                base_url=self._base_url(r.get("base_url", t.get("base_url")), rwhere),
                provider_model=rpm,
                api_key_env=r.get("api_key_env", t.get("api_key_env")),
                timeout_s=self._number(r, "timeout_s", rwhere, default=timeout, strict=True),
                weight=self._number(r, "weight", rwhere, default=1.0, strict=True),
                api_key=self._api_key(r.get("api_key_env", t.get("api_key_env")), rwhere, env),
            ))
        return ProviderModel(name, tuple(replicas), ModelPrice(*prices), expected, tuple(fallbacks))

    def _rule(self, i: int, raw: Any) -> Rule:
        where = f"rules[{i}]"
        t = self._check_keys(raw, _RULE_KEYS, where)
        model = t.get("model")
        if not isinstance(model, str):
            raise self._fail(f"{where}.model", f"must be the name of one catalog model (a string), got {model!r}; "
                             f"the catalog has {sorted(self._models)}")
        if model not in self._models:
            raise self._fail(f"{where}.model", f"unknown model {model!r}; the catalog has {sorted(self._models)}")
        header, regex = t.get("header"), t.get("regex")
        if header is None and regex is None:
            raise self._fail(where, "a rule needs a 'header' or a 'regex' to match")
        if header is not None and (not isinstance(header, str) or not header):
            raise self._fail(f"{where}.header", f"must be a header name, got {header!r}")
        if "equals" in t and "in" in t:
            raise self._fail(where, "give 'equals' or 'in', not both")
        if ("equals" in t or "in" in t) and header is None:
            raise self._fail(where, "'equals'/'in' need a 'header'")
        values = None
        if "equals" in t:
            if not isinstance(t["equals"], str):
                raise self._fail(f"{where}.equals", f"must be a string, got {t['equals']!r}")
            values = frozenset([t["equals"]])
        elif "in" in t:
            if not isinstance(t["in"], list) or not t["in"] or not all(isinstance(v, str) for v in t["in"]):
                raise self._fail(f"{where}.in", "must be a non-empty list of strings")
            values = frozenset(t["in"])
        pattern = None
        if regex is not None:
            if not isinstance(regex, str):
                raise self._fail(f"{where}.regex", f"must be a string, got {regex!r}")
            try:
                pattern = re.compile(regex)
            except re.error as exc:
                raise self._fail(f"{where}.regex", f"not a valid regular expression: {exc}") from None
        name = t.get("name", f"rule {i}")
        if not isinstance(name, str):
            raise self._fail(f"{where}.name", f"must be a string, got {name!r}")
        return Rule(name=name, model=model, header=header.lower() if header else None, values=values, regex=pattern)

    # --- public --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, environ: Mapping[str, str] | None = None) -> ProviderCatalog:
        """Read and validate a TOML catalog."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no TOML
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"cannot read provider catalog {path}: {exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(f"{path}: not valid TOML: {exc}") from exc
        return cls(data, source=str(path), environ=environ)

    def __getitem__(self, name: str) -> ProviderModel:
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def prices(self) -> PriceCatalog:
        """The catalog's prices as a :class:`PriceCatalog` (for ``Router.with_prices`` and cost accounting)."""
        return PriceCatalog({name: m.price for name, m in self._models.items()}, source=self.source)

    def expected_output_tokens(self, models: Sequence[str]) -> dict[str, float] | None:
        """``{model: expected output tokens}`` when the catalog gives it for every one of ``models``, else None."""
        out = {m: self._models[m].expected_output_tokens for m in models if m in self._models}
        if len(out) != len(models) or any(v is None for v in out.values()):
            return None
        return out  # type: ignore[return-value]

    def chain(self, model: str) -> list[str]:
        """``model`` then its fallbacks, each model once."""
        out = [model]
        for target in self._models[model].fallbacks:
            if target not in out:
                out.append(target)
        return out

    def redact(self, text: str) -> str:
        """``text`` with every configured API key replaced by ``***`` (for messages that quote upstream replies)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"ProviderCatalog({self.source!r}, models={sorted(self._models)}, rules={len(self.rules)})"
