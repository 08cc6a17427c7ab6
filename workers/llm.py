"""Call models through litellm, tier by tier, with fallback, redaction, budgets and usage.

This is the only module that imports litellm. ``ModelClient.complete`` tries the asked
tier's models in order, then the next allowed tier (local → mid → frontier). External
tiers are skipped when the data is ``private_only`` or the installation's budget is
spent; before any external call the messages are redacted. Every call, failed or not,
becomes a ``CallRecord`` with tokens, latency, dollars and the reason it was made; a tier
ruled out before any call (budget, context window) leaves a ``skipped`` record, so the
ledger's tier path shows every tier a job walked and why it left each one.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from bot.kernel.errors import (
    BudgetExhausted,
    CibotError,
    ConfigError,
    InputError,
    InvalidOutput,
    ModelError,
    ModelUnavailable,
    PrivateTierDown,
)
from bot.kernel.settings import Settings
from policies import tokens
from policies.costs import api_call_cost, private_call_cost
from policies.model import Policy, Tier, TierPrice
from workers import metrics
from workers.redaction import redact

log = logging.getLogger("cibot.llm")

MODEL_TIERS: tuple[str, ...] = ("local", "mid", "frontier")
Message = Mapping[str, Any]
CallOutcome = Literal["ok", "error", "invalid", "skipped"]
SKIPPED: CallOutcome = "skipped"  # a tier ruled out before any call; costs nothing

# Model-facing text (the bot's own PR notes live with the job pipeline).
REPAIR_PROMPT = (
    "Your previous reply could not be used: {problem}. Reply again with only a JSON "
    "value that matches the requested schema, with no prose and no code fences."
)
REPAIR_TEXT_PROMPT = "Your previous reply could not be used: {problem}. Reply again, fixing that."

# litellm exception (by class name, most specific first) → (error kind, cibot error).
# https://docs.litellm.ai/docs/exception_mapping
ERROR_TABLE: tuple[tuple[str, str, type[CibotError]], ...] = (
    ("Timeout", "timeout", ModelUnavailable),
    ("ContextWindowExceededError", "context_window", ModelError),
    ("ContentPolicyViolationError", "content_policy", ModelError),
    ("RateLimitError", "rate_limited", ModelUnavailable),
    ("AuthenticationError", "auth", ConfigError),
    ("PermissionDeniedError", "auth", ConfigError),
    ("NotFoundError", "not_found", ConfigError),
    ("BadRequestError", "bad_request", ModelError),
    ("UnprocessableEntityError", "bad_request", ModelError),
    ("ServiceUnavailableError", "unavailable", ModelUnavailable),
    ("BadGatewayError", "unavailable", ModelUnavailable),
    ("InternalServerError", "server_error", ModelUnavailable),
    ("APIConnectionError", "connection", ModelUnavailable),
    ("APIResponseValidationError", "bad_response", ModelUnavailable),
    ("APIError", "api_error", ModelUnavailable),
)
# Reasons that rule out a whole tier, not just one of its models; no call was made.
TIER_WIDE = ("over_budget", "budget_unavailable", "context_window")
# litellm reports some transport failures of OpenAI-compatible servers as a 500.
CONNECTION_HINTS = ("Connection refused", "Connection reset", "ConnectError", "Errno 111")


class BudgetGate(Protocol):
    """Reserve and settle external spend (``workers.budget.Budget`` in production)."""

    def reserve(self, installation_id: int, usd: float, limit: float) -> bool:
        """Add ``usd`` if it keeps the month within ``limit``; say whether it did."""

    def settle(self, installation_id: int, reserved: float, actual: float) -> None:
        """Replace a reservation with the actual cost."""


@dataclass(frozen=True)
class CallRecord:
    """Describe one model call: who served it, what it used, what it cost and why it ran.

    The journal keeps it in Redis while its attempt runs (``workers.journal``) and the
    ledger stores it (``ledger_values``); neither ever sees prompt or reply text.
    """

    tier: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    outcome: CallOutcome = "ok"
    error_kind: str = ""
    escalation_reason: str = ""
    redactions: dict[str, int] = field(default_factory=dict)

    def ledger_values(self) -> dict[str, Any]:
        """Return the ledger's columns for this call: redactions as a count and their kinds."""
        kinds = sorted(kind[:40] for kind, count in self.redactions.items() if count)
        return {
            **asdict(self),
            # Cut to the widths of the ledger's model_calls columns.
            "error_kind": self.error_kind[:64],
            "escalation_reason": self.escalation_reason[:128],
            "redactions": sum(self.redactions.values()),
            "redaction_kinds": ",".join(kinds)[:512],
        }


@dataclass(frozen=True)
class Completion:
    """Hold a validated reply and the trail of calls and fallbacks that produced it."""

    text: str
    data: Any
    tier: str
    model: str
    calls: tuple[CallRecord, ...]
    fallbacks: int
    fallback_reasons: tuple[str, ...]
    redactions: dict[str, int]


class _Failed(Exception):
    """Carry a failed attempt's kind and cibot error inside the tier loop."""

    def __init__(self, kind: str, error: CibotError, *, skipped: bool = False) -> None:
        """Keep the reason, the error to raise if nothing is left, and whether no call ran."""
        super().__init__(kind)
        self.kind = kind
        self.error = error
        self.skipped = skipped


@dataclass
class _Request:
    """Hold one ``complete`` call's inputs and the trail it leaves (one per call, one thread)."""

    messages: list[dict[str, Any]]
    schema: dict[str, Any] | None
    validate: Callable[[Any], None] | None
    private_only: bool
    installation_id: int
    max_tokens: int | None
    log_fields: dict[str, Any]
    calls: list[CallRecord] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    pending_reason: str = ""
    external_blocked: bool = False
    external_tried: bool = False
    private_unavailable: bool = False
    last_failure: _Failed | None = None
    redacted: list[dict[str, Any]] | None = None
    redactions: dict[str, int] = field(default_factory=dict)

    def fall_back(self, reason: str) -> None:
        """Record one fallback step and make it the reason for the next call."""
        self.reasons.append(reason)
        self.pending_reason = reason


_import_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def _litellm() -> Any:
    """Import litellm on first use, offline (its price map is bundled) and quiet."""
    module = _loaded.get("litellm")
    if module is not None:
        return module
    with _import_lock:
        if "litellm" not in _loaded:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            with warnings.catch_warnings():
                # litellm builds pydantic schemas lazily, inside its first call, and pydantic
                # warns about their ReadOnly TypedDict items. A mocked call (no network)
                # builds them here, once, so no call of ours ever trips over the warning.
                warnings.filterwarnings("ignore", category=UserWarning, module=r"pydantic\.")
                import litellm

                litellm.suppress_debug_info = True
                _adopt_loggers()
                litellm.completion(
                    model="hosted_vllm/warm-up",
                    messages=[{"role": "user", "content": "warm up"}],
                    mock_response="ok",
                )
            _loaded["litellm"] = litellm
    return _loaded["litellm"]


# litellm gives these loggers handlers and formats of its own; cibot's logging setup
# (bot.kernel.logsetup) should print their lines like every other, and only from WARNING up.
LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def _adopt_loggers() -> None:
    """Route litellm's loggers through the root handler, at WARNING and above."""
    for name in LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)


def _price_entry(model: str) -> dict[str, Any] | None:
    """Find a model in litellm's price map, stripping provider prefixes as needed."""
    cost_map = _litellm().model_cost
    name = model
    while True:
        entry = cost_map.get(name)
        if isinstance(entry, dict) and entry.get("input_cost_per_token") is not None:
            return entry
        if "/" not in name:
            return None
        name = name.split("/", 1)[1]


def price_per_token(model: str, override: TierPrice | None = None) -> tuple[float, float]:
    """Return (input, output) USD per token: the policy's price, else litellm's price map."""
    if override and override.input_per_mtok is not None and override.output_per_mtok is not None:
        return override.input_per_mtok / 1e6, override.output_per_mtok / 1e6
    entry = _price_entry(model)
    if entry is None:
        raise ConfigError(
            f"no price for model {model!r} in litellm's price map: set tiers.<tier>.price."
            "input_per_mtok and output_per_mtok in the policy",
            key="price",
        )
    prices = (float(entry["input_cost_per_token"]), float(entry["output_cost_per_token"]))
    if override and override.input_per_mtok is not None:
        prices = (override.input_per_mtok / 1e6, prices[1])
    if override and override.output_per_mtok is not None:
        prices = (prices[0], override.output_per_mtok / 1e6)
    return prices


def cached_input_price(model: str, input_price: float) -> float:
    """Return the USD per cached prompt token (litellm's cache-read price, else full price)."""
    entry = _price_entry(model)
    cached = entry.get("cache_read_input_token_cost") if entry else None
    return float(cached) if cached is not None else input_price


def classify(exc: Exception) -> tuple[str, type[CibotError]]:
    """Map a litellm (or transport) exception to an error kind and a cibot error class."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    for name, kind, error in ERROR_TABLE:
        if name in names:
            if kind == "server_error" and any(h in str(exc) for h in CONNECTION_HINTS):
                return "connection", ModelUnavailable
            return kind, error
    return "unexpected", ModelError


def _message_text(message: Message) -> str:
    """Return a message's text content (string or list of text parts)."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def parse_json_reply(text: str) -> Any:
    """Parse a JSON reply, tolerating one surrounding Markdown code fence."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    return json.loads(body)


def check_reply(
    text: str, schema: dict[str, Any] | None, validate: Callable[[Any], None] | None
) -> Any:
    """Return the parsed reply, or raise InvalidOutput saying what is wrong with it."""
    data: Any = None
    if schema is not None:
        try:
            data = parse_json_reply(text)
        except ValueError as exc:
            raise InvalidOutput(f"reply is not valid JSON ({exc.args[0][:80]})") from exc
        error = _schema_error(schema, data)
        if error:
            raise InvalidOutput(f"reply does not match the schema: {error}")
    elif not text.strip():
        raise InvalidOutput("reply is empty")
    if validate is not None:
        try:
            validate(data if schema is not None else text)
        except (ValueError, LookupError, TypeError) as exc:
            # A validator that trips over an odd reply (a missing key, a wrong type) has
            # found an invalid reply, not a bug: retry or escalate rather than crash the job.
            # Keep enough of the problem for a repair round to act on (a failing test's
            # assertion and traceback tail), but bounded: it goes back into a prompt.
            raise InvalidOutput(_problem(exc)[:2000]) from exc
    return data


def _problem(exc: Exception) -> str:
    """Say what a validator found wrong, in words (a KeyError's text is only the key)."""
    if isinstance(exc, KeyError):
        return f"the reply lacks the key {exc}"
    return str(exc) or "the reply has the wrong shape"


def _jsonschema() -> Any:
    """Import jsonschema (installed with litellm; untyped, so kept behind Any)."""
    return importlib.import_module("jsonschema")


def _schema_error(schema: dict[str, Any], data: Any) -> str:
    """Return the first JSON-schema violation of ``data``, or an empty string."""
    jsonschema = _jsonschema()

    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return ""
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message[:120]}"


def _check_schema(schema: dict[str, Any]) -> None:
    """Reject a JSON schema that is itself invalid (a caller bug, not a model failure)."""
    jsonschema = _jsonschema()

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise InputError(f"the reply schema is not a valid JSON schema: {exc.message}") from exc


def _with_overrides(policy: Policy, settings: Settings) -> Policy:
    """Apply CIBOT_<TIER>_MODEL/_API_BASE again (idempotent) in case the policy lacks them."""
    tiers = dict(policy.tiers)
    for name, override in settings.tier_overrides.items():
        tier = tiers.get(name)
        if tier is None:
            continue
        update: dict[str, Any] = {}
        if override.model:
            update["models"] = (override.model, *(m for m in tier.models if m != override.model))
        if override.api_base:
            update["api_base"] = override.api_base
        tiers[name] = tier.model_copy(update=update)
    return policy.model_copy(update={"tiers": tiers})


class ModelClient:
    """Complete prompts on the cheapest allowed tier, falling back model by model, tier by tier."""

    def __init__(
        self,
        policy: Policy,
        settings: Settings,
        budget: BudgetGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        recorder: Callable[[CallRecord], None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Keep the policy (with operator overrides), the budget gate and a latency clock.

        ``recorder`` receives every CallRecord as it happens, including calls of a
        ``complete`` that ends in an error. ``environ`` holds the API key variables.
        """
        self.policy = _with_overrides(policy, settings)
        self.budget = budget
        self.clock = clock
        self.recorder = recorder
        # A recorder may also journal each call before it is made (workers.journal).
        self.on_call: Callable[[CallRecord], None] | None = getattr(recorder, "begin", None)
        self._environ = os.environ if environ is None else environ

    def complete(
        self,
        tier: str,
        messages: Sequence[Message],
        *,
        schema: dict[str, Any] | None = None,
        validate: Callable[[Any], None] | None = None,
        private_only: bool,
        installation_id: int,
        max_tokens: int | None = None,
        reason: str | None = None,
        task: str = "",
        delivery_id: str = "",
    ) -> Completion:
        """Return a validated completion, starting at ``tier`` and falling back as allowed.

        Raises PrivateTierDown when the data must stay private (or the budget is spent)
        and no private model answers; InvalidOutput when the last tier's reply stayed
        invalid; ModelUnavailable when every allowed model failed.
        """
        if tier not in MODEL_TIERS:
            raise InputError(f"tier {tier!r} has no model: use one of {', '.join(MODEL_TIERS)}")
        if schema is not None:
            _check_schema(schema)
        request = _Request(
            messages=[dict(m) for m in messages],
            schema=schema,
            validate=validate,
            private_only=private_only,
            installation_id=installation_id,
            max_tokens=max_tokens,
            log_fields={
                "delivery_id": delivery_id,
                "installation_id": installation_id,
                "task": task,
            },
            pending_reason=reason or "",
        )
        return self._run(tier, request)

    # -- the tier loop ------------------------------------------------------------------

    def _plan(self, start: str, private_only: bool) -> list[str]:
        """Return the tiers to try in order: the asked one and those above it that are allowed."""
        tiers = list(MODEL_TIERS[MODEL_TIERS.index(start) :])
        if private_only:
            tiers = [t for t in tiers if self.policy.tiers[t].private]
            return tiers or [self.policy.best_private_tier()]
        return tiers

    def _run(self, start: str, request: _Request) -> Completion:
        """Walk the plan; stay on the best private tier when external ones are blocked."""
        plan = self._plan(start, request.private_only)
        if request.private_only and not self.policy.tiers[start].private:
            request.pending_reason = "private_only"
        best, tried = self.policy.best_private_tier(), []
        while True:
            if not plan and request.external_blocked and best not in tried:
                plan.append(best)  # over budget: stay private, and the reasons say why
            if not plan:
                raise self._final_error(request)
            name = plan.pop(0)
            if request.external_blocked and not self.policy.tiers[name].private:
                continue
            tried.append(name)
            try:
                return self._tier(name, request)
            except _Failed:
                continue

    def _tier(self, name: str, request: _Request) -> Completion:
        """Try each model of one tier; raise _Failed with the reason to leave the tier."""
        tier = self.policy.tiers[name]
        failure: _Failed | None = None
        for model in tier.models:
            try:
                return self._model(name, tier, model, request)
            except _Failed as failed:
                failure = failed
                if failed.skipped:
                    self._record_skip(name, model, failed.kind, request)
                request.fall_back(failed.kind)
                metrics.observe_fallback(name, failed.kind)
                if failed.kind not in TIER_WIDE:
                    request.last_failure = failed
                if tier.private and isinstance(failed.error, ModelUnavailable):
                    request.private_unavailable = True
                if failed.kind in TIER_WIDE or failed.kind == "invalid_output":
                    break  # the tier as a whole cannot serve this; go up
        assert failure is not None
        raise failure

    def _model(self, name: str, tier: Tier, model: str, request: _Request) -> Completion:
        """Run one model: gate external calls, call, validate, and repair once if private."""
        if not tier.private:
            price_per_token(model, tier.price)  # an unpriced API model is a config error: stop
        messages = request.messages if tier.private else self._redacted(request)
        self._check_context(tier, messages, request)
        reserved = 0.0 if tier.private else self._reserve(name, tier, model, messages, request)
        text, data = self._attempt(name, tier, model, messages, request, reserved)
        if isinstance(data, _Failed) and data.kind == "invalid_output" and tier.private:
            prompt = REPAIR_PROMPT if request.schema is not None else REPAIR_TEXT_PROMPT
            repair = [
                *messages,
                {"role": "assistant", "content": text},
                {"role": "user", "content": prompt.format(problem=data.error)},
            ]
            request.pending_reason = "repair"
            text, data = self._attempt(name, tier, model, repair, request, 0.0)
        if isinstance(data, _Failed):
            raise data
        return self._completion(name, model, text, data, request)

    def _attempt(
        self,
        name: str,
        tier: Tier,
        model: str,
        messages: list[dict[str, Any]],
        request: _Request,
        reserved: float,
    ) -> tuple[str, Any]:
        """Make one call; return (text, parsed data or a _Failed for invalid output)."""
        started = self.clock()
        request.external_tried = request.external_tried or not tier.private
        if self.on_call is not None:
            self.on_call(self._provisional(name, tier, model, messages, request))
        try:
            with metrics.in_flight(name):
                response = _litellm().completion(**self._call_args(tier, model, messages, request))
        except Exception as exc:
            kind, error = classify(exc)
            # A timed-out API call may still be billed: price it at its reservation, as the
            # budget does, so the ledger and the budget agree. A refused call cost nothing.
            cost = reserved if kind == "timeout" else 0.0
            record = CallRecord(
                tier=name,
                model=model,
                latency_s=self.clock() - started,
                cost_usd=cost,
                outcome="error",
                error_kind=kind,
                escalation_reason=request.pending_reason,
                redactions=self._redactions_for(tier, request),
            )
            self._settle(request, reserved, cost)
            self._record(record, request)
            log.debug(
                "model call failed",
                extra={**request.log_fields, "tier": name, "model": model, "error": repr(exc)},
            )
            raise _Failed(kind, self._error(error, kind, name, model)) from exc
        return self._usage(name, tier, model, response, request, started, reserved)

    def _usage(
        self,
        name: str,
        tier: Tier,
        model: str,
        response: Any,
        request: _Request,
        started: float,
        reserved: float,
    ) -> tuple[str, Any]:
        """Record a completed call's usage and cost, and validate its reply."""
        latency = self.clock() - started
        choices = getattr(response, "choices", None) or []
        text = str(choices[0].message.content or "") if choices else ""
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        details = getattr(usage, "prompt_tokens_details", None)
        cached = int(getattr(details, "cached_tokens", 0) or 0)
        cost = self.cost(name, model, prompt, completion, cached)
        self._settle(request, reserved, cost)
        try:
            data: Any = check_reply(text, request.schema, request.validate)
            outcome: CallOutcome = "ok"
        except InvalidOutput as exc:
            data, outcome = _Failed("invalid_output", exc), "invalid"
        self._record(
            CallRecord(
                tier=name,
                model=model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=cached,
                latency_s=latency,
                cost_usd=cost,
                outcome=outcome,
                error_kind="invalid_output" if outcome == "invalid" else "",
                escalation_reason=request.pending_reason,
                redactions=self._redactions_for(tier, request),
            ),
            request,
        )
        return text, data

    def _completion(
        self, name: str, model: str, text: str, data: Any, request: _Request
    ) -> Completion:
        """Build the Completion from the request's trail."""
        return Completion(
            text=text,
            data=data,
            tier=name,
            model=model,
            calls=tuple(request.calls),
            fallbacks=len(request.reasons),
            fallback_reasons=tuple(request.reasons),
            redactions=dict(request.redactions) if request.external_tried else {},
        )

    def _final_error(self, request: _Request) -> CibotError:
        """Choose the error to raise once every allowed tier has failed."""
        steps = ", ".join(request.reasons) or "none"
        held = request.private_only or request.external_blocked
        if held and request.private_unavailable:
            why = "the data is private_only" if request.private_only else "the budget is spent"
            return PrivateTierDown(
                f"every private model endpoint failed and {why}, so nothing was sent out "
                f"(fallbacks: {steps}); the job will be retried"
            )
        failure = request.last_failure
        if failure is None:
            return ModelError(f"no model tier could take this request (fallbacks: {steps})")
        failure.error.add_note(f"fallbacks: {steps}")
        if not isinstance(failure.error, InvalidOutput):
            return failure.error
        # Say it was every tier tried, not only the last one's complaint, to whoever reads it.
        error = InvalidOutput(
            f"the reply failed validation on every tier tried; last: {failure.error}"
        )
        error.__cause__ = failure.error
        error.add_note(f"fallbacks: {steps}")
        return error

    # -- gates: context, redaction, budget ----------------------------------------------

    def _check_context(self, tier: Tier, messages: list[dict[str, Any]], request: _Request) -> None:
        """Skip a tier whose context window cannot hold the prompt plus the reply."""
        # UTF-8 length bounds the token count from above, so most prompts skip tokenizing.
        bound = sum(len(_message_text(m).encode()) for m in messages)
        if bound + self._max_tokens(tier, request) <= tier.context_window:
            return
        prompt = sum(tokens.count(_message_text(m)) for m in messages)
        if prompt + self._max_tokens(tier, request) > tier.context_window:
            raise _Failed(
                "context_window",
                ModelError(
                    f"the prompt ({prompt} tokens) does not fit a {tier.context_window}-token window"
                ),
                skipped=True,
            )

    def _redacted(self, request: _Request) -> list[dict[str, Any]]:
        """Return the messages with secrets redacted (done once per request)."""
        if request.redacted is None:
            counts: Counter[str] = Counter()
            out = []
            for message in request.messages:
                result = redact(_message_text(message))
                counts.update(result.counts)
                out.append({**message, "content": result.text})
            request.redacted, request.redactions = out, dict(sorted(counts.items()))
        return request.redacted

    def _provisional(
        self, name: str, tier: Tier, model: str, messages: list[dict[str, Any]], request: _Request
    ) -> CallRecord:
        """Describe a call about to be made, priced at its worst case (the prompt and the
        most the reply may use), for the journal that outlives a killed worker."""
        prompt = sum(tokens.count(_message_text(m)) for m in messages)
        return CallRecord(
            tier=name,
            model=model,
            prompt_tokens=prompt,
            cost_usd=self.cost(name, model, prompt, self._max_tokens(tier, request), 0),
            outcome="error",
            escalation_reason=request.pending_reason,
            redactions=self._redactions_for(tier, request),
        )

    def _redactions_for(self, tier: Tier, request: _Request) -> dict[str, int]:
        """Return the redaction counts that apply to a call on this tier."""
        return {} if tier.private else dict(request.redactions)

    def _reserve(
        self, name: str, tier: Tier, model: str, messages: list[dict[str, Any]], request: _Request
    ) -> float:
        """Reserve the call's worst-case cost against the monthly budget, or refuse the call."""
        if self.budget is None:
            return 0.0
        prompt = sum(tokens.count(_message_text(m)) for m in messages)
        estimate = self.cost(name, model, prompt, self._max_tokens(tier, request), 0)
        limit = self.policy.budgets.monthly_frontier_usd
        try:
            allowed = self.budget.reserve(request.installation_id, estimate, limit)
        except BudgetExhausted as exc:
            request.external_blocked = True
            raise _Failed("budget_unavailable", exc, skipped=True) from exc
        if not allowed:
            request.external_blocked = True
            log.info(
                "budget refuses external call",
                extra={
                    **request.log_fields,
                    "tier": name,
                    "model": model,
                    "estimate_usd": round(estimate, 6),
                    "limit_usd": limit,
                },
            )
            raise _Failed(
                "over_budget",
                BudgetExhausted(f"the monthly external-model budget (${limit:,.2f}) is spent"),
                skipped=True,
            )
        return estimate

    def _settle(self, request: _Request, reserved: float, actual: float) -> None:
        """Swap a reservation for the actual cost; a broken budget store only logs."""
        if self.budget is None or not reserved:
            return
        try:
            self.budget.settle(request.installation_id, reserved, actual)
        except BudgetExhausted:
            log.warning("budget settle failed", extra=request.log_fields)

    # -- the call itself ----------------------------------------------------------------

    def _max_tokens(self, tier: Tier, request: _Request) -> int:
        """Return the reply cap: the caller's, never above the tier's."""
        wanted = request.max_tokens or tier.max_output_tokens
        return min(wanted, tier.max_output_tokens)

    def _call_args(
        self, tier: Tier, model: str, messages: list[dict[str, Any]], request: _Request
    ) -> dict[str, Any]:
        """Build litellm's arguments; retries are off because fallback is ours."""
        args: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "timeout": tier.timeout_s,
            "num_retries": 0,
            "max_retries": 0,
            "max_tokens": self._max_tokens(tier, request),
            "drop_params": True,
        }
        if tier.api_base:
            args["api_base"] = tier.api_base
        key = self._environ.get(tier.api_key_env) if tier.api_key_env else None
        if key:
            args["api_key"] = key
        if request.schema is not None:
            # vLLM enforces json_schema with guided decoding (xgrammar); APIs honour it too.
            args["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": request.schema},
            }
        return args

    def cost(self, tier: str, model: str, prompt: int, completion: int, cached: int) -> float:
        """Price one call: API tiers per token, private tiers from their rung's monthly cost."""
        spec = self.policy.tiers[tier]
        has_price = spec.price.input_per_mtok is not None or spec.price.output_per_mtok is not None
        if spec.private and not has_price:
            rung = self.policy.rungs.get(spec.rung or "")
            return private_call_cost(rung, prompt + completion) if rung else 0.0
        input_price, output_price = price_per_token(model, spec.price)
        cached = min(cached, prompt)
        full = api_call_cost(input_price, output_price, prompt - cached, completion)
        return full + cached * cached_input_price(model, input_price)

    def _error(self, error: type[CibotError], kind: str, tier: str, model: str) -> CibotError:
        """Build the cibot error for a failed call; the message says what to check.

        The message names the failure in the fallback vocabulary (timeout, connection, ...),
        never the library's exception class; the debug log keeps that.
        """
        base = self.policy.tiers[tier].api_base or "the provider's default endpoint"
        what = kind.replace("_", " ")
        if error is ConfigError:
            env = self.policy.tiers[tier].api_key_env or "the provider's API key variable"
            return ConfigError(
                f"tier {tier} model {model} at {base} refused the request ({what}): "
                f"check the model name and {env}",
                key=f"tiers.{tier}",
            )
        return error(f"tier {tier} model {model} at {base} failed ({what})")

    def _record_skip(self, name: str, model: str, kind: str, request: _Request) -> None:
        """Record a tier ruled out before any call, so the ledger's walk shows it."""
        self._record(
            CallRecord(
                tier=name,
                model=model,
                outcome=SKIPPED,
                error_kind=kind,
                escalation_reason=request.pending_reason,
            ),
            request,
        )

    def _record(self, record: CallRecord, request: _Request) -> None:
        """Keep a call in the request's trail, hand it to the recorder, and log it."""
        request.calls.append(record)
        log.info(
            "tier skipped" if record.outcome == SKIPPED else "model call",
            extra={
                **request.log_fields,
                "tier": record.tier,
                "model": record.model,
                "outcome": record.outcome,
                "error_kind": record.error_kind,
                "escalation_reason": record.escalation_reason,
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
                "cached_tokens": record.cached_tokens,
                "latency_s": round(record.latency_s, 4),
                "cost_usd": record.cost_usd,
                "redactions": sum(record.redactions.values()),
            },
        )
        if record.outcome != SKIPPED:  # a skipped tier is no call: the fallback metric counts it
            metrics.observe_call(record, private=self.policy.tiers[record.tier].private)
        if self.recorder is not None:
            self.recorder(record)
