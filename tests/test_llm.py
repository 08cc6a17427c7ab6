"""Drive the tiered model client through real litellm against loopback fake model servers."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bot.kernel.errors import (
    TRANSIENT,
    BudgetExhausted,
    ConfigError,
    InputError,
    InvalidOutput,
    ModelUnavailable,
    PrivateTierDown,
)
from bot.kernel.settings import Settings
from policies.costs import private_call_cost
from policies.loading import default_policy_text, load_policy, parse_yaml
from policies.model import Policy, TierPrice
from tests.fakes.model import FakeModelServer, minimal_instance
from tests.services import free_port
from workers.budget import Budget
from workers.llm import (
    REPAIR_PROMPT,
    REPAIR_TEXT_PROMPT,
    CallRecord,
    ModelClient,
    check_reply,
    classify,
    price_per_token,
)

LOCAL_ID = "openai/gpt-oss-120b"
QWEN_ID = "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"
KEY_ENV = "CIBOT_TEST_OPENAI_KEY"
API_KEY = "sk-test-not-a-real-key-5f2c"
INSTALLATION = 4242
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 3},
        "risk": {"enum": ["low", "medium", "high"]},
        "files": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["summary", "risk", "files"],
    "additionalProperties": False,
}
GOOD = {"summary": "Adds retry to the uploader", "risk": "low", "files": ["up.py"]}

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GH_TOKEN = "ghp_" + "R9d2kQx7Lm4Tz8Wc1Vb6Yn3Hs5Jp0Fa2Ge7K"
PEM_LINES = [
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
    "LxoTz8rQ1v0YvT3kN3aGqH5Zr2o4Vh3yq+9c1PjKf0u8WmJ2sXb7Dn4eQa6LpRt",
]
SECRET_DIFF = "\n".join(
    [
        "diff --git a/deploy/config.py b/deploy/config.py",
        "--- a/deploy/config.py",
        "+++ b/deploy/config.py",
        "@@ -1,2 +1,9 @@",
        " import os",
        f'+AWS_ACCESS_KEY_ID = "{AWS_KEY}"',
        f'+GITHUB_TOKEN = "{GH_TOKEN}"',
        '+DEPLOY_KEY = """',
        "+-----BEGIN RSA PRIVATE KEY-----",
        *(f"+{line}" for line in PEM_LINES),
        "+-----END RSA PRIVATE KEY-----",
        '+"""',
    ]
)


@pytest.fixture
def local() -> Iterator[FakeModelServer]:
    """Play the self-hosted vLLM server (serving both private models)."""
    with FakeModelServer("local", model_ids=(LOCAL_ID, QWEN_ID)) as server:
        yield server


@pytest.fixture
def external() -> Iterator[FakeModelServer]:
    """Play the external API (mid and frontier models) and record every request."""
    with FakeModelServer("external", model_ids=("gpt-5", "gpt-5.5")) as server:
        yield server


def make_policy(
    tmp_path: Path, local: FakeModelServer, external: FakeModelServer, **changes: Any
) -> Policy:
    """Write a policy like the default one, pointed at the fakes through CIBOT_* overrides."""
    data = parse_yaml(default_policy_text(), source="default")
    tiers = data["tiers"]
    tiers["local"].update(changes.pop("local_tier", {}))
    tiers["mid"] = {
        "models": ["openai/gpt-5"],
        "private": False,
        "api_key_env": KEY_ENV,
        "timeout_s": 10,
        **changes.pop("mid_tier", {}),
    }
    tiers["frontier"] = {
        "models": ["openai/gpt-5.5"],
        "private": False,
        "api_key_env": KEY_ENV,
        "timeout_s": 10,
        **changes.pop("frontier_tier", {}),
    }
    data["budgets"] = {"monthly_frontier_usd": changes.pop("budget", 500.0)}
    assert not changes, changes
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    mid_base = local.url if tiers["mid"]["private"] else external.url
    env = {
        "CIBOT_LOCAL_API_BASE": local.url,
        "CIBOT_MID_API_BASE": mid_base,
        "CIBOT_FRONTIER_MODEL": "openai/gpt-5.5",
        "CIBOT_FRONTIER_API_BASE": external.url,
    }
    return load_policy(path, overrides=Settings.from_env(env).tier_overrides)


PRIVATE_MID = {"models": [f"hosted_vllm/{QWEN_ID}"], "private": True, "rung": "2xH200"}


def client(
    policy: Policy, budget: Any = None, records: list[CallRecord] | None = None
) -> ModelClient:
    """Build the client the way a worker does, with the fake API key in its environment."""
    return ModelClient(
        policy,
        Settings.from_env({}),
        budget,
        recorder=records.append if records is not None else None,
        environ={KEY_ENV: API_KEY},
    )


def ask(mc: ModelClient, tier: str, text: str = "Summarise this diff.", **kw: Any) -> Any:
    """Call complete with the usual keyword arguments."""
    kw.setdefault("private_only", False)
    kw.setdefault("installation_id", INSTALLATION)
    return mc.complete(tier, [{"role": "user", "content": text}], **kw)


# -- the happy path and usage ----------------------------------------------------------


def test_local_structured_reply_is_validated_priced_and_recorded(tmp_path, local, external):
    policy = make_policy(tmp_path, local, external)
    local.script("Summarise", GOOD)
    records: list[CallRecord] = []
    done = ask(client(policy, records=records), "local", schema=SCHEMA, reason="default_route")
    assert (done.tier, done.model, done.data) == ("local", f"hosted_vllm/{LOCAL_ID}", GOOD)
    assert done.fallbacks == 0 and done.fallback_reasons == () and done.redactions == {}
    (call,) = done.calls
    assert records == [call]
    assert call.outcome == "ok" and call.escalation_reason == "default_route"
    assert call.prompt_tokens > 0 and call.completion_tokens > 0 and call.latency_s > 0
    rung = policy.rungs["1xH200"]
    assert call.cost_usd == pytest.approx(
        private_call_cost(rung, call.prompt_tokens + call.completion_tokens)
    )
    (sent,) = local.chat_requests()
    assert sent["model"] == LOCAL_ID
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
    assert sent["max_tokens"] == policy.tiers["local"].max_output_tokens
    assert external.requests == []


def test_schema_without_script_gets_a_minimal_valid_object(tmp_path, local, external):
    done = ask(client(make_policy(tmp_path, local, external)), "local", schema=SCHEMA)
    assert done.data == {"summary": "xxx", "risk": "low", "files": [""]}
    assert done.data == minimal_instance(SCHEMA)


def test_cached_prompt_tokens_are_recorded(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    shared = "Context: " + " ".join(f"line {i} of the build log" for i in range(200))
    first = ask(mc, "local", shared + "\nQuestion one?")
    second = ask(mc, "local", shared + "\nQuestion two, a different one?")
    assert first.calls[0].cached_tokens == 0
    cached = second.calls[0].cached_tokens
    assert cached > 0 and cached % 16 == 0 and cached < second.calls[0].prompt_tokens


def test_api_call_cost_matches_litellm_price_map(tmp_path, local, external):
    import litellm

    mc = client(make_policy(tmp_path, local, external))
    shared = "Review: " + " ".join(f"hunk {i} changes the parser" for i in range(120))
    first = ask(mc, "frontier", shared + " first")
    second = ask(mc, "frontier", shared + " second")
    for done in (first, second):
        call = done.calls[0]
        assert (call.tier, call.model) == ("frontier", "openai/gpt-5.5")
        expected = sum(
            litellm.cost_per_token(
                model="openai/gpt-5.5",
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                cache_read_input_tokens=call.cached_tokens,
            )
        )
        assert call.cost_usd == pytest.approx(expected, rel=1e-9)
    assert second.calls[0].cached_tokens > 0
    assert external.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_price_per_token_strips_prefixes_and_honours_policy_prices():
    import litellm

    entry = litellm.model_cost["gpt-5"]
    assert price_per_token("openai/gpt-5") == (
        entry["input_cost_per_token"],
        entry["output_cost_per_token"],
    )
    assert price_per_token("openai/gpt-5", TierPrice(input_per_mtok=2, output_per_mtok=8)) == (
        2e-6,
        8e-6,
    )
    assert price_per_token("openai/gpt-5", TierPrice(output_per_mtok=8))[1] == 8e-6
    with pytest.raises(ConfigError, match="price"):
        price_per_token("hosted_vllm/some/unknown-model")


# -- fallback within a tier, across tiers, and its reasons ------------------------------


def test_falls_back_to_the_second_model_in_the_same_tier(tmp_path, local, external):
    policy = make_policy(
        tmp_path,
        local,
        external,
        local_tier={"models": [f"hosted_vllm/{LOCAL_ID}", f"hosted_vllm/{QWEN_ID}"]},
    )
    local.fail("500", times=1)
    done = ask(client(policy), "local")
    assert (done.tier, done.model) == ("local", f"hosted_vllm/{QWEN_ID}")
    assert done.fallback_reasons == ("server_error",) and done.fallbacks == 1
    assert [c.outcome for c in done.calls] == ["error", "ok"]
    assert done.calls[1].escalation_reason == "server_error"
    assert [r["model"] for r in local.chat_requests()] == [LOCAL_ID, QWEN_ID]
    assert external.requests == []


def test_private_model_down_escalates_to_frontier_and_records_why(tmp_path, local, external):
    policy = make_policy(tmp_path, local, external, mid_tier=PRIVATE_MID)
    local.fail("refuse", times=None)  # the vLLM host is down: connections are refused
    done = ask(client(policy), "local")
    assert (done.tier, done.model) == ("frontier", "openai/gpt-5.5")
    assert done.fallbacks == 2 and done.fallback_reasons == ("connection", "connection")
    assert [(c.tier, c.outcome, c.error_kind) for c in done.calls] == [
        ("local", "error", "connection"),
        ("mid", "error", "connection"),
        ("frontier", "ok", ""),
    ]
    assert done.calls[-1].escalation_reason == "connection"
    assert len(external.chat_requests()) == 1


def test_private_only_with_private_model_down_sends_nothing_out(tmp_path, local, external):
    policy = make_policy(tmp_path, local, external)
    local.fail("refuse", times=None)
    records: list[CallRecord] = []
    mc = client(policy, records=records)
    for tier in ("local", "mid", "frontier"):
        with pytest.raises(PrivateTierDown, match="private_only") as caught:
            ask(mc, tier, SECRET_DIFF, private_only=True)
        assert isinstance(caught.value, TRANSIENT)
    assert external.requests == []
    assert {(r.tier, r.error_kind) for r in records} == {("local", "connection")}


def test_private_only_never_leaves_even_when_asked_for_frontier(tmp_path, local, external):
    done = ask(client(make_policy(tmp_path, local, external)), "frontier", private_only=True)
    assert done.tier == "local" and done.calls[0].escalation_reason == "private_only"
    assert external.requests == []


def test_timeout_is_per_tier(tmp_path, local, external):
    policy = make_policy(tmp_path, local, external, local_tier={"timeout_s": 0.4})
    local.fail("timeout", times=1)
    started = time.monotonic()
    done = ask(client(policy), "local")
    assert time.monotonic() - started < 5
    first = done.calls[0]
    assert (first.outcome, first.error_kind) == ("error", "timeout")
    assert 0.35 < first.latency_s < 3
    assert done.tier == "mid" and done.fallback_reasons == ("timeout",)


def test_reset_connection_and_server_error_are_told_apart(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    local.fail("refuse", times=1)
    assert ask(mc, "local").fallback_reasons == ("connection",)
    local.fail("500", times=1)
    assert ask(mc, "local").fallback_reasons == ("server_error",)
    assert len(external.chat_requests()) == 2


def test_everything_down_raises_model_unavailable_with_the_steps(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    local.fail("500", times=None)
    external.fail("500", times=None)
    with pytest.raises(TRANSIENT) as caught:
        ask(mc, "local")
    assert type(caught.value).__name__ == "ModelUnavailable"
    assert "server_error, server_error, server_error" in "".join(caught.value.__notes__)
    # The message is for people: the failure in words, not litellm's exception class.
    assert str(caught.value).endswith("failed (server error)")
    assert "Error" not in str(caught.value)


# -- structured output and repair -------------------------------------------------------


def test_invalid_json_twice_escalates_with_invalid_output(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    local.fail("invalid_json", times=2)
    external.script(None, GOOD)
    done = ask(mc, "local", schema=SCHEMA)
    assert done.data == GOOD and done.tier == "mid"
    assert done.fallbacks == 1 and done.fallback_reasons == ("invalid_output",)
    assert [(c.tier, c.outcome, c.escalation_reason) for c in done.calls] == [
        ("local", "invalid", ""),
        ("local", "invalid", "repair"),
        ("mid", "ok", "invalid_output"),
    ]
    repair = local.chat_requests()[1]["messages"]
    assert repair[-2]["role"] == "assistant"
    assert repair[-1]["content"].startswith(REPAIR_PROMPT.split("{")[0])


def test_one_invalid_reply_is_repaired_locally(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    local.fail("invalid_json", times=1)
    local.script(None, GOOD)
    done = ask(mc, "local", schema=SCHEMA)
    assert done.tier == "local" and done.data == GOOD and done.fallbacks == 0
    assert [c.outcome for c in done.calls] == ["invalid", "ok"]
    assert external.requests == []


def test_schema_violation_and_validator_rejection_count_as_invalid(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    local.script(None, {"summary": "ok then", "risk": "catastrophic", "files": ["a"]})

    def anchored(data: Any) -> None:
        if "missing.py" not in data["files"]:
            raise ValueError("finding is not anchored in the diff")

    external.script(None, {**GOOD, "files": ["elsewhere.py"]}, times=1)
    external.script(None, {**GOOD, "files": ["missing.py"]})
    done = ask(mc, "local", schema=SCHEMA, validate=anchored)
    assert done.tier == "frontier" and done.data["files"] == ["missing.py"]
    assert done.fallback_reasons == ("invalid_output", "invalid_output")


def test_private_only_invalid_twice_raises_invalid_output(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    local.fail("invalid_json", times=2)
    with pytest.raises(InvalidOutput):
        ask(mc, "local", schema=SCHEMA, private_only=True)
    assert external.requests == []


def test_plain_text_reply_failing_its_validator_is_repaired_with_the_text_prompt(
    tmp_path, local, external
):
    mc = client(make_policy(tmp_path, local, external))
    local.script(lambda body: len(body["messages"]) == 1, "no marker here")
    local.script(None, "MARKER: fixed")

    def has_marker(text: Any) -> None:
        if not text.startswith("MARKER:"):
            raise ValueError("reply must start with MARKER:")

    done = ask(mc, "local", validate=has_marker)
    assert (done.tier, done.text, done.data) == ("local", "MARKER: fixed", None)
    repair = local.chat_requests()[1]["messages"][-1]["content"]
    assert repair == REPAIR_TEXT_PROMPT.format(problem="reply must start with MARKER:")


def test_unpriced_external_model_is_a_config_error_before_anything_is_sent(
    tmp_path, local, external
):
    policy = make_policy(tmp_path, local, external, mid_tier={"models": ["openai/unpriced-x"]})
    with pytest.raises(ConfigError, match="price"):
        ask(client(policy), "mid")
    assert external.requests == []


def test_check_reply_accepts_fenced_json_and_rejects_empty_text():
    assert check_reply('```json\n{"a": 1}\n```', {"type": "object"}, None) == {"a": 1}
    with pytest.raises(InvalidOutput, match="empty"):
        check_reply("   ", None, None)
    with pytest.raises(InvalidOutput, match=r"^the reply lacks the key 'missing'$"):
        check_reply('{"a": 1}', {"type": "object"}, lambda data: data["missing"])
    with pytest.raises(InvalidOutput, match="schema"):
        check_reply(
            '{"a": "x"}', {"type": "object", "properties": {"a": {"type": "integer"}}}, None
        )


def test_bad_arguments_are_clear_errors(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    with pytest.raises(InputError, match="human"):
        ask(mc, "human")
    with pytest.raises(InputError, match="schema"):
        ask(mc, "local", schema={"type": "no-such-type"})
    assert local.requests == []


def test_prompt_too_big_for_local_context_goes_up(tmp_path, local, external):
    policy = make_policy(
        tmp_path, local, external, local_tier={"context_window": 2048, "max_output_tokens": 512}
    )
    done = ask(client(policy), "local", "word " * 3000)
    assert done.tier == "mid" and done.fallback_reasons == ("context_window",)
    assert [(c.tier, c.outcome, c.escalation_reason) for c in done.calls] == [
        ("local", "skipped", ""),
        ("mid", "ok", "context_window"),
    ]
    assert local.requests == []


# -- redaction ------------------------------------------------------------------------


def test_planted_secrets_never_reach_the_external_model(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    local.fail("invalid_json", times=2)  # local sees the raw diff, then we escalate
    done = ask(mc, "local", f"Review this diff:\n{SECRET_DIFF}", schema=SCHEMA)
    assert done.tier == "mid"
    raw = external.raw_bodies()
    assert raw, "the external fake received nothing"
    for secret in (AWS_KEY, GH_TOKEN, *PEM_LINES, "BEGIN RSA PRIVATE KEY"):
        assert secret.encode() not in raw
        assert json.dumps(secret)[1:-1].encode() not in raw  # nor JSON-escaped
    assert b"[REDACTED:aws_access_key]" in raw and b"[REDACTED:private_key]" in raw
    assert done.redactions == {"aws_access_key": 1, "github_token": 1, "private_key": 1}
    assert done.calls[-1].redactions == done.redactions
    assert all(c.redactions == {} for c in done.calls if c.tier == "local")
    assert AWS_KEY.encode() in local.raw_bodies()  # private tiers get the real text


def test_secrets_and_keys_never_appear_in_logs(tmp_path, local, external, caplog):
    caplog.set_level(logging.DEBUG, logger="cibot")
    ask(
        client(make_policy(tmp_path, local, external)),
        "frontier",
        SECRET_DIFF,
        task="review",
        delivery_id="d-1",
    )
    logged = [r for r in caplog.records if r.name.startswith("cibot")]
    assert logged, "the client logged nothing"
    dumped = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in logged)
    for secret in (API_KEY, AWS_KEY, GH_TOKEN, PEM_LINES[0]):
        assert secret not in dumped
    call = next(r for r in logged if r.getMessage() == "model call")
    fields = {k: getattr(call, k) for k in ("delivery_id", "installation_id", "task", "tier")}
    assert fields == {
        "delivery_id": "d-1",
        "installation_id": INSTALLATION,
        "task": "review",
        "tier": "frontier",
    }


# -- budgets -------------------------------------------------------------------------


def test_budget_exhausted_stays_private_and_says_why(tmp_path, local, external, redis_url):
    budget = Budget(redis_url)
    assert budget.reserve(INSTALLATION, 5.0, 5.0)
    mc = client(make_policy(tmp_path, local, external, budget=5.0), budget=budget)
    done = ask(mc, "frontier", "Refactor the whole module.")
    assert done.tier == "local"
    assert done.fallback_reasons == ("over_budget",)
    # The refused tier leaves a record that costs nothing, so the ledger shows the walk.
    assert [
        (c.tier, c.outcome, c.error_kind, c.escalation_reason, c.cost_usd) for c in done.calls
    ] == [
        ("frontier", "skipped", "over_budget", "", 0.0),
        ("local", "ok", "", "over_budget", done.calls[1].cost_usd),
    ]
    assert external.requests == []
    assert budget.spent(INSTALLATION) == pytest.approx(5.0)


def test_budget_spent_and_private_down_holds_the_job(tmp_path, local, external, redis_url):
    budget = Budget(redis_url)
    budget.reserve(INSTALLATION, 1.0, 1.0)
    local.fail("refuse", times=None)
    mc = client(make_policy(tmp_path, local, external, budget=1.0), budget=budget)
    with pytest.raises(PrivateTierDown, match="budget"):
        ask(mc, "local")
    assert external.requests == []


def test_external_spend_is_reserved_then_settled_to_the_actual_cost(
    tmp_path, local, external, redis_url
):
    budget = Budget(redis_url)
    mc = client(make_policy(tmp_path, local, external), budget=budget)
    done = ask(mc, "frontier", "Explain the incident.")
    assert budget.spent(INSTALLATION) == pytest.approx(done.calls[0].cost_usd, abs=2e-6)
    external.fail("500", times=None)
    with pytest.raises(ModelUnavailable):
        ask(mc, "mid")  # mid and frontier fail: their reservations are given back
    assert budget.spent(INSTALLATION) == pytest.approx(done.calls[0].cost_usd, abs=4e-6)


def test_a_timed_out_api_call_is_priced_at_its_reservation(tmp_path, local, external, redis_url):
    budget = Budget(redis_url)
    mc = client(make_policy(tmp_path, local, external, mid_tier={"timeout_s": 0.4}), budget=budget)
    external.fail("timeout", times=1)
    done = ask(mc, "mid", "Review this change.")
    timed_out, answered = done.calls
    assert (timed_out.tier, timed_out.error_kind, answered.tier) == ("mid", "timeout", "frontier")
    # The provider may bill a call it finished after we gave up: the budget keeps the
    # reservation, and the record carries the same figure, so the ledger agrees with it.
    assert timed_out.cost_usd > 0
    spent = budget.spent(INSTALLATION)
    assert spent == pytest.approx(timed_out.cost_usd + answered.cost_usd, abs=4e-6)


def test_unreachable_budget_store_keeps_work_private(tmp_path, local, external):
    budget = Budget(f"redis://127.0.0.1:{free_port()}/0")
    mc = client(make_policy(tmp_path, local, external), budget=budget)
    done = ask(mc, "frontier")
    assert done.tier == "local" and done.fallback_reasons == ("budget_unavailable",)
    assert external.requests == []
    with pytest.raises(BudgetExhausted, match="CIBOT_REDIS_URL"):
        budget.spent(INSTALLATION)


def test_client_applies_operator_overrides_to_a_plain_policy(tmp_path, local, external):
    make_policy(tmp_path, local, external)  # writes policy.yaml
    plain = load_policy(tmp_path / "policy.yaml")  # no CIBOT_* overrides applied
    assert plain.tiers["local"].api_base != local.url
    settings = Settings.from_env(
        {"CIBOT_LOCAL_API_BASE": local.url, "CIBOT_LOCAL_MODEL": f"hosted_vllm/{QWEN_ID}"}
    )
    done = ModelClient(plain, settings).complete(
        "local", [{"role": "user", "content": "hi"}], private_only=True, installation_id=1
    )
    assert done.model == f"hosted_vllm/{QWEN_ID}"
    assert local.chat_requests()[0]["model"] == QWEN_ID


def test_a_model_the_server_does_not_serve_is_a_config_error(tmp_path, local, external):
    policy = make_policy(tmp_path, local, external, local_tier={"models": ["hosted_vllm/typo"]})
    records: list[CallRecord] = []
    with pytest.raises(ConfigError, match="check the model name"):
        ask(client(policy, records=records), "local", private_only=True)
    assert [r.error_kind for r in records] == ["not_found"]


def test_text_parts_are_redacted_too(tmp_path, local, external):
    mc = client(make_policy(tmp_path, local, external))
    parts = [{"type": "text", "text": f"token {GH_TOKEN}"}, {"type": "text", "text": " end"}]
    done = mc.complete(
        "frontier", [{"role": "user", "content": parts}], private_only=False, installation_id=1
    )
    assert done.redactions == {"github_token": 1}
    assert GH_TOKEN.encode() not in external.raw_bodies()


# -- error mapping --------------------------------------------------------------------


def test_litellm_exceptions_map_through_one_table():
    import litellm

    args = {"message": "m", "llm_provider": "openai", "model": "gpt-5"}
    cases = [
        (litellm.RateLimitError(**args), "rate_limited", "ModelUnavailable"),
        (litellm.AuthenticationError(**args), "auth", "ConfigError"),
        (litellm.ContextWindowExceededError(**args), "context_window", "ModelError"),
        (litellm.BadRequestError(**args), "bad_request", "ModelError"),
        (litellm.ServiceUnavailableError(**args), "unavailable", "ModelUnavailable"),
        (litellm.InternalServerError(**args), "server_error", "ModelUnavailable"),
        (
            litellm.InternalServerError(**{**args, "message": "[Errno 111] Connection refused"}),
            "connection",
            "ModelUnavailable",
        ),
        (ValueError("weird"), "unexpected", "ModelError"),
    ]
    for exc, kind, error in cases:
        assert (classify(exc)[0], classify(exc)[1].__name__) == (kind, error)


# -- the fake itself -----------------------------------------------------------------


def test_fake_lists_models_and_queues_beyond_max_num_seqs():
    latency = 0.3
    with (
        FakeModelServer("vllm", latency=latency, max_num_seqs=2, model_ids=(LOCAL_ID,)) as fake,
        httpx.Client(base_url=fake.url, timeout=10) as http,
    ):
        listed = http.get("/models").json()
        assert [m["id"] for m in listed["data"]] == [LOCAL_ID]
        body = {"model": LOCAL_ID, "messages": [{"role": "user", "content": "hi"}]}
        marked = time.monotonic()
        fake.mark()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: http.post("/chat/completions", json=body), range(6)))
        elapsed = time.monotonic() - marked
        mean = fake.mean_busy()
        window = time.monotonic() - marked
        assert all(r.status_code == 200 for r in replies)
        assert replies[0].json()["usage"]["prompt_tokens"] > 0
        assert fake.max_in_flight == 2 and fake.max_queued >= 2
        assert elapsed >= 3 * latency - 0.02  # three waves of two
        # Busy slot-seconds: six sequences each holding a slot for the latency.
        assert 6 * latency - 0.05 <= mean * window <= 6 * latency + 0.5
        assert mean <= 2.0
        unknown = http.post("/chat/completions", json={**body, "model": "nope"})
        assert unknown.status_code == 404 and unknown.json()["type"] == "NotFoundError"
