"""Test the pure webhook core and the feature routers on real payload shapes."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlencode

import pytest

from bot.events import Context, Router, is_bot
from bot.kernel.errors import PayloadError, PayloadTooLarge, SignatureError
from bot.kernel.jobs import SUPERSEDE, JobRef
from bot.server import ROUTER
from bot.webhooks import MAX_BODY_BYTES, Event, check_size, parse, sign, verify_signature
from policies.loading import build_policy, default_policy_text, parse_yaml
from policies.model import Policy
from tests.edge_server import FIXTURES, SECRET, fixture, headers_for

HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"


def policy(**sections: dict[str, Any]) -> Policy:
    """Return the default policy with some sections replaced."""
    data = parse_yaml(default_policy_text(), source="default")
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return build_policy(data, source="test")


def event(name: str, payload: dict[str, Any] | None = None, delivery: str = "d-1") -> Event:
    """Return an Event for a fixture (or a given payload)."""
    return Event(name=name.split(".")[0], delivery_id=delivery, payload=payload or fixture(name))


def route(name: str, payload: dict[str, Any] | None = None, **ctx: Any) -> list[JobRef]:
    """Route one fixture through the composed router."""
    context = Context(policy=ctx.pop("policy", None) or policy(), **ctx)
    return ROUTER.dispatch(event(name, payload), context)


# --- signatures ---------------------------------------------------------------------


def test_a_valid_signature_is_accepted() -> None:
    body = b'{"zen": "Design for failure."}'
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    verify_signature(body, f"sha256={digest}", secret=SECRET)
    assert sign(body, secret=SECRET) == f"sha256={digest}"


def test_githubs_documented_example_signature_verifies() -> None:
    # The worked example in GitHub's "Validating webhook deliveries" page.
    verify_signature(
        b"Hello, World!",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        secret="It's a Secret to Everybody",
    )


@pytest.mark.parametrize(
    ("header", "secret", "message"),
    [
        (None, SECRET, "missing"),
        ("", SECRET, "missing"),
        ("sha256=" + "0" * 64, SECRET, "does not match"),
        ("sha1=" + "0" * 40, SECRET, "sha256="),
        ("sha256=deadbeef", SECRET, "does not match"),
        ("sha256=é", SECRET, "does not match"),
        ("SHA256=whatever", SECRET, "sha256="),
        ("sha256=anything", "", "no webhook secret"),
    ],
)
def test_bad_signatures_are_refused(header: str | None, secret: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message) as caught:
        verify_signature(b"{}", header, secret=secret)
    assert caught.value.status == 401


def test_a_signature_from_another_secret_is_refused() -> None:
    body = b'{"action": "opened"}'
    with pytest.raises(SignatureError):
        verify_signature(body, sign(body, secret="other"), secret=SECRET)


def test_sha1_header_alone_is_the_wrong_algorithm() -> None:
    body = b"{}"
    sha1 = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    with pytest.raises(SignatureError, match="missing"):
        parse(
            {"X-Hub-Signature": sha1, "X-GitHub-Event": "ping", "X-GitHub-Delivery": "a"},
            body,
            secret=SECRET,
        )


# --- parsing --------------------------------------------------------------------------


def test_parse_returns_the_event() -> None:
    body = (FIXTURES / "pull_request.opened.json").read_bytes()
    got = parse(headers_for(body, event="pull_request", delivery="abc-1"), body, secret=SECRET)
    assert (got.name, got.delivery_id, got.action) == ("pull_request", "abc-1", "opened")
    assert got.installation_id == 2311213
    assert got.repo == "octo-org/hello-world"


def test_parse_reads_headers_case_insensitively() -> None:
    body = b'{"zen": "x"}'
    headers = {k.lower(): v for k, v in headers_for(body, event="ping", delivery="z").items()}
    assert parse(headers, body, secret=SECRET).name == "ping"


def test_parse_accepts_the_form_encoded_content_type() -> None:
    payload = json.dumps({"zen": "Keep it logically awesome."})
    body = urlencode({"payload": payload}).encode()
    headers = headers_for(body, event="ping", delivery="f-1")
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    assert parse(headers, body, secret=SECRET).payload["zen"] == "Keep it logically awesome."


@pytest.mark.parametrize(
    ("body", "drop", "override", "message"),
    [
        (b"{not json", None, {}, "not valid JSON"),
        (b"\xff\xfe", None, {}, "not valid JSON"),
        (b"[1, 2]", None, {}, "JSON object"),
        (b"{}", "X-GitHub-Event", {}, "X-GitHub-Event header is missing"),
        (b"{}", "X-GitHub-Delivery", {}, "X-GitHub-Delivery header is missing"),
        (b"{}", None, {"X-GitHub-Event": "Pull Request!"}, "malformed"),
        (b"{}", None, {"X-GitHub-Delivery": "a" * 200}, "malformed"),
        (b"{}", None, {"X-GitHub-Delivery": "   "}, "missing"),
        (
            b"payload=1&payload=2",
            None,
            {"Content-Type": "application/x-www-form-urlencoded"},
            "exactly one",
        ),
    ],
)
def test_malformed_deliveries_are_payload_errors(
    body: bytes, drop: str | None, override: dict[str, str], message: str
) -> None:
    headers = headers_for(body, event="pull_request", delivery="d-1")
    headers.update(override)
    if drop:
        del headers[drop]
    with pytest.raises(PayloadError, match=message) as caught:
        parse(headers, body, secret=SECRET)
    assert caught.value.status == 400


def test_deep_nesting_is_a_payload_error_not_a_crash() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(PayloadError):
        parse(headers_for(body, event="ping", delivery="n"), body, secret=SECRET)


def test_the_signature_is_checked_before_the_body_is_parsed() -> None:
    headers = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "d", "X-Hub-Signature-256": "x"}
    with pytest.raises(SignatureError):
        parse(headers, b"{not json", secret=SECRET)


def test_size_cap() -> None:
    check_size(MAX_BODY_BYTES)
    with pytest.raises(PayloadTooLarge) as caught:
        check_size(MAX_BODY_BYTES + 1)
    assert caught.value.status == 413


def test_event_accessors_name_the_missing_or_mistyped_field() -> None:
    got = event("pull_request.opened")
    assert got.str_at("pull_request.head.sha") == HEAD
    assert got.int_at("pull_request.number") == 2
    assert got.bool_at("pull_request.draft") is False
    assert got.bool_at("pull_request.nonexistent", default=True) is True
    assert got.list_at("pull_request.nonexistent") == []
    with pytest.raises(PayloadError, match=r"'pull_request\.nope'"):
        got.str_at("pull_request.nope")
    with pytest.raises(PayloadError, match="must be a string"):
        got.str_at("pull_request.number")
    with pytest.raises(PayloadError, match="must be an integer"):
        got.int_at("pull_request.draft")
    with pytest.raises(PayloadError, match="must be a boolean"):
        got.bool_at("pull_request.title")
    with pytest.raises(PayloadError, match="must be a list"):
        got.list_at("pull_request.title")


def test_installation_id_ignores_junk() -> None:
    for junk in ({"id": True}, {"id": "12"}, {"id": -1}, "x", None):
        assert Event("pull_request", "d", {"installation": junk}).installation_id is None


# --- the router registry --------------------------------------------------------------


def test_router_composes_and_runs_action_handlers_before_catch_alls() -> None:
    calls: list[str] = []
    first, second = Router(), Router()

    @first.register("issues", action="opened")
    def specific(ev: Event, ctx: Context) -> list[JobRef]:
        calls.append("specific")
        return []

    @second.register("issues")
    def catch_all(ev: Event, ctx: Context) -> list[JobRef]:
        calls.append("catch_all")
        return []

    both = Router(first, second)
    both.dispatch(Event("issues", "d", {"action": "opened"}), Context(policy=policy()))
    both.dispatch(Event("issues", "d", {"action": "closed"}), Context(policy=policy()))
    assert calls == ["specific", "catch_all", "catch_all"]
    assert both.handles("issues") and not both.handles("push")
    assert both.routes() == {("issues", "opened"): 1, ("issues", None): 1}


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"login": "alice", "type": "User"}, False),
        ({"login": "dependabot[bot]", "type": "Bot"}, True),
        ({"login": "renovate[bot]", "type": "User"}, True),
        ({"login": "CIBOT[bot]", "type": "User"}, True),
        ({"login": "ci-robot", "type": "Bot"}, True),
        ("alice", False),
        (None, False),
    ],
)
def test_is_bot(user: object, expected: bool) -> None:
    assert is_bot(user, bot_login="cibot[bot]") is expected


# --- event to job -----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["opened", "reopened", "ready_for_review"])
def test_pr_ready_to_look_at_gets_a_summary(action: str) -> None:
    (job,) = route(f"pull_request.{action}")
    assert job == JobRef(
        task="summary",
        installation_id=2311213,
        repo="octo-org/hello-world",
        delivery_id="d-1",
        pr_number=2,
        head_sha=HEAD,
    )


def test_auto_review_adds_a_review_job() -> None:
    jobs = route("pull_request.opened", policy=policy(review={"auto": True}))
    assert [j.task for j in jobs] == ["summary", "review"]


def test_auto_review_respects_a_disabled_review_task() -> None:
    tasks = parse_yaml(default_policy_text(), source="default")["tasks"]
    tasks["review"]["enabled"] = False
    jobs = route("pull_request.opened", policy=policy(review={"auto": True}, tasks=tasks))
    assert [j.task for j in jobs] == ["summary"]


def test_drafts_are_skipped_by_default_and_configurable() -> None:
    payload = fixture("pull_request.opened")
    payload["pull_request"]["draft"] = True
    assert route("pull_request.opened", payload) == []
    keep = policy(behaviour={"skip_drafts": False})
    assert [j.task for j in route("pull_request.opened", payload, policy=keep)] == ["summary"]


@pytest.mark.parametrize(
    "user",
    [
        {"login": "dependabot[bot]", "type": "Bot", "id": 49699333},
        {"login": "cibot[bot]", "type": "Bot", "id": 1},
        {"login": "deploy-robot", "type": "Bot", "id": 2},
    ],
)
def test_bot_authored_prs_are_skipped_by_default_and_configurable(user: dict[str, Any]) -> None:
    payload = fixture("pull_request.opened")
    payload["pull_request"]["user"] = user
    assert route("pull_request.opened", payload) == []
    assert route("pull_request.synchronize", {**payload, "action": "synchronize"}) == []
    keep = policy(behaviour={"skip_bots": False})
    assert [j.task for j in route("pull_request.opened", payload, policy=keep)] == ["summary"]


def test_synchronize_refreshes_the_summary_debounced() -> None:
    (job,) = route("pull_request.synchronize")
    assert job.task == "summary"
    assert job.head_sha == "9049f1265b7d61be4a8904a9a27120d2064dab3b"
    assert job.args == {SUPERSEDE: True}


@pytest.mark.parametrize("merged", [True, False])
def test_closed_records_the_outcome(merged: bool) -> None:
    payload = fixture("pull_request.closed")
    payload["pull_request"]["merged"] = merged
    (job,) = route("pull_request.closed", payload)
    assert (job.task, job.pr_number, job.args) == ("outcome", 2, {"merged": merged})


def test_other_pull_request_actions_are_ignored() -> None:
    payload = {**fixture("pull_request.opened"), "action": "labeled"}
    assert route("pull_request.opened", payload) == []


def test_failed_workflow_run_on_a_pr_head_gets_a_ci_job() -> None:
    (job,) = route("workflow_run.completed")
    assert (job.task, job.pr_number, job.head_sha) == ("ci", 2, HEAD)
    assert job.args == {"run_id": 30433642}


@pytest.mark.parametrize("conclusion", ["success", "cancelled", "skipped", None])
def test_workflow_runs_that_did_not_fail_are_ignored(conclusion: str | None) -> None:
    payload = fixture("workflow_run.completed")
    payload["workflow_run"]["conclusion"] = conclusion
    assert route("workflow_run.completed", payload) == []


def test_a_failure_on_a_stale_head_or_outside_any_pr_is_ignored() -> None:
    payload = fixture("workflow_run.completed")
    payload["workflow_run"]["pull_requests"][0]["head"]["sha"] = "0" * 40
    assert route("workflow_run.completed", payload) == []
    payload["workflow_run"]["pull_requests"] = []
    assert route("workflow_run.completed", payload) == []


def test_failed_check_suite_from_a_third_party_ci_gets_a_ci_job() -> None:
    (job,) = route("check_suite.completed")
    assert (job.task, job.pr_number, job.args) == ("ci", 2, {"check_suite_id": 414944374})


def test_check_suite_of_github_actions_is_left_to_workflow_run() -> None:
    payload = fixture("check_suite.completed")
    payload["check_suite"]["app"]["slug"] = "github-actions"
    assert route("check_suite.completed", payload) == []


def test_a_command_comment_on_a_pr_becomes_a_command_job() -> None:
    (job,) = route("issue_comment.created")
    assert (job.task, job.pr_number, job.head_sha) == ("command", 2, "")
    assert job.args == {
        "command": "review",
        "argv": "",
        "comment_id": 492700400,
        "author": "alice",
    }


@pytest.mark.parametrize(
    "user",
    [
        {"login": "cibot[bot]", "type": "Bot"},
        {"login": "cibot[bot]", "type": "User"},
        {"login": "other-app[bot]", "type": "Bot"},
    ],
)
def test_comments_by_bots_never_trigger_commands(user: dict[str, str]) -> None:
    payload = fixture("issue_comment.created")
    payload["comment"]["user"] = user
    payload["comment"]["body"] = "/cibot review"
    assert route("issue_comment.created", payload) == []


def test_a_custom_bot_login_is_ignored_too() -> None:
    payload = fixture("issue_comment.created")
    payload["comment"]["user"] = {"login": "our-ci-bot", "type": "User"}
    assert route("issue_comment.created", payload, bot_login="our-ci-bot") == []


def test_comments_without_a_command_or_on_plain_issues_are_ignored() -> None:
    payload = fixture("issue_comment.created")
    payload["comment"]["body"] = "LGTM, thanks!"
    assert route("issue_comment.created", payload) == []
    payload = fixture("issue_comment.created")
    del payload["issue"]["pull_request"]
    assert route("issue_comment.created", payload) == []


def test_a_human_reply_in_a_review_thread_is_feedback() -> None:
    (job,) = route("pull_request_review_comment.created")
    assert job.task == "feedback"
    assert job.args == {"kind": "reply", "comment_id": 284312601, "content": "created"}


def test_new_threads_and_bot_review_comments_are_not_feedback() -> None:
    payload = fixture("pull_request_review_comment.created")
    del payload["comment"]["in_reply_to_id"]
    assert route("pull_request_review_comment.created", payload) == []
    payload = fixture("pull_request_review_comment.created")
    payload["comment"]["user"] = {"login": "cibot[bot]", "type": "Bot"}
    assert route("pull_request_review_comment.created", payload) == []


@pytest.mark.parametrize("action", ["resolved", "unresolved"])
def test_review_thread_resolution_is_feedback(action: str) -> None:
    payload = fixture("pull_request_review_comment.created")
    payload = {
        "action": action,
        "thread": {"node_id": "PRRT_kwDOAA", "comments": [payload["comment"]]},
        "pull_request": payload["pull_request"],
        "repository": payload["repository"],
        "sender": payload["sender"],
        "installation": payload["installation"],
    }
    (job,) = ROUTER.dispatch(
        Event("pull_request_review_thread", "d", payload), Context(policy=policy())
    )
    assert job.args == {"kind": "thread", "comment_id": 284312630, "content": action}


def test_installations_are_recorded() -> None:
    (job,) = route("installation.created")
    assert (job.task, job.installation_id, job.repo) == ("installation", 2311213, "")
    assert job.args == {
        "event": "installation",
        "action": "created",
        "account": "octo-org",
        "added": 0,
        "removed": 0,
    }
    (job,) = route("installation_repositories.added")
    assert (job.args["event"], job.args["action"], job.args["added"]) == (
        "installation_repositories",
        "added",
        1,
    )


def test_unhandled_events_route_to_nothing() -> None:
    assert not ROUTER.handles("star")
    assert (
        ROUTER.dispatch(Event("star", "d", {"action": "created"}), Context(policy=policy())) == []
    )


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        ("pull_request.opened", ("pull_request", "head", "sha"), 5),
        ("pull_request.opened", ("pull_request", "number"), "2"),
        ("pull_request.opened", ("repository",), []),
        ("pull_request.synchronize", ("pull_request", "draft"), "yes"),
        ("issue_comment.created", ("comment", "body"), None),
        ("workflow_run.completed", ("workflow_run", "pull_requests"), {"number": 2}),
        ("installation.created", ("installation", "account"), None),
    ],
)
def test_mistyped_payloads_are_payload_errors(name: str, path: tuple[str, ...], value: Any) -> None:
    payload = fixture(name)
    node = payload
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(PayloadError):
        route(name, payload)


def test_every_fixture_is_a_real_event_shape() -> None:
    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    assert len(names) >= 12
    for name in names:
        payload = fixture(name)
        if name != "ping":
            assert payload["action"] == name.split(".")[1]
            assert payload["installation"]["id"] == 2311213
        assert "sender" in payload or name == "ping"
