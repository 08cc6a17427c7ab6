"""Score the router on hand-labelled fixture cases with `cibot eval`, in process and as a CLI.

The fixtures (tests/fixtures/eval) hold four cases: a sensitive auth change the router
catches, a routine docs change, a breaking PyJWT bump in requirements.txt that the
dependency knowledge base flags as auth and crypto (a JWT library signs and verifies
tokens), and a routine two-service change whose database ``session.py`` the pinned
``**/session.*`` path rule mistakes for auth; plus a file with a malformed line. Exact
figures are asserted under a pinned policy (the default policy's tiers and tasks with
fixed sensitive rules), so that tuning the default rules does not move them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot import evaluate
from bot.cli import main
from policies import scoring
from policies.evidence import Evidence
from policies.loading import default_policy_text, load_policy
from policies.model import CATEGORIES, Policy
from policies.reasons import Reason
from policies.scoring import Entry, Ratio, Row
from policies.services import ServiceEntry, ServiceMap

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
CASES = FIXTURES / "cases.jsonl"
PINNED_SENSITIVE: dict[str, Any] = {
    "auth": {
        "paths": ["**/auth/**", "**/session.*"],
        "content": [{"pattern": r"\b(login_required|authenticate)\b"}],
    },
    "crypto": {"content": [{"pattern": r"\bhmac\.new\b"}]},
    "payments": {"paths": ["**/payments/**"]},
    "infra": {"paths": ["**/Dockerfile"]},
}
# (name, cases, positives, recall, false escalation) for every row, in table order.
ROWS = [
    ("summary", 4, 2, (2, 2), (1, 2)),
    ("review", 4, 2, (2, 2), (1, 2)),
    ("auth", 4, 2, (2, 2), (1, 2)),
    ("crypto", 4, 1, (1, 1), (0, 3)),
    ("payments", 4, 0, (0, 0), (0, 4)),
    ("infra", 4, 0, (0, 0), (0, 4)),
    ("deps", 4, 1, (1, 1), (0, 3)),
    ("ci", 4, 1, (1, 1), (0, 3)),
]
TABLE = [
    "cibot eval: 4 cases from cases.jsonl; tasks: summary, review, deps, ci",
    "",
    "                   cases positives  recall           false escalation",
    "summary                4         2  2/2 (100.0%)     1/2 (50.0%)",
    "review                 4         2  2/2 (100.0%)     1/2 (50.0%)",
    "  auth                 4         2  2/2 (100.0%)     1/2 (50.0%)",
    "  crypto               4         1  1/1 (100.0%)     0/3 (0.0%)",
    "  payments             4         0  0/0 (-)          0/4 (0.0%)",
    "  infra                4         0  0/0 (-)          0/4 (0.0%)",
    "deps                   4         1  1/1 (100.0%)     0/3 (0.0%)",
    "ci                     4         1  1/1 (100.0%)     0/3 (0.0%)",
    "",
    "bump detection:    1/1 (100.0%) labelled bumps found with their from/to",
    "services_touched:  4/4 (100.0%) cases where the touched services equal the label",
]
SESSION = "services/a/db/session.py matches '**/session.*'"
DB_POOL_NOTE = (
    "Resizes service a's database session pool and orders service b's listing: "
    "a database session, not a login session."
)


def pinned_policy_text() -> str:
    """Return the default policy with the sensitive rules pinned for these tests."""
    policy = yaml.safe_load(default_policy_text())
    policy["sensitive"] = PINNED_SENSITIVE
    return yaml.safe_dump(policy)


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the pinned policy to a file."""
    path = tmp_path_factory.mktemp("eval-policy") / "policy.yml"
    path.write_text(pinned_policy_text(), encoding="utf-8")
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in the fixtures folder with no CIBOT_* variables set."""
    for key in [k for k in os.environ if k.startswith("CIBOT_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(FIXTURES)
    yield


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `cibot eval` in process and return (exit code, stdout, stderr)."""
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def figures(
    data: Mapping[str, Any],
) -> list[tuple[str, int, int, tuple[int, int], tuple[int, int]]]:
    """Read each row's figures out of the JSON report."""
    return [
        (
            r["name"],
            r["cases"],
            r["positives"],
            (r["recall"]["hits"], r["recall"]["of"]),
            (r["false_escalation"]["hits"], r["false_escalation"]["of"]),
        )
        for r in data["rows"]
    ]


def ids(data: Mapping[str, Any], name: str, key: str) -> list[str]:
    """Return the ids listed under one row's misses or false escalations."""
    row = next(r for r in data["rows"] if r["name"] == name)
    return [entry["id"] for entry in row[key]]


@pytest.mark.usefixtures("clean_env")
def test_json_report_has_the_exact_figures(
    capsys: pytest.CaptureFixture[str], pinned: Path
) -> None:
    code, out, err = cli(capsys, "--cases", "cases.jsonl", "--policy", str(pinned), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["sources"] == ["cases.jsonl"] and data["cases"] == 4
    assert data["tasks"] == ["summary", "review", "deps", "ci"]
    assert figures(data) == ROWS
    assert [r["kind"] for r in data["rows"]] == ["task", "task"] + ["category"] * 4 + ["task"] * 2
    assert data["rows"][0]["recall"]["pct"] == 100.0
    assert data["rows"][0]["false_escalation"]["pct"] == 50.0
    assert data["rows"][4]["recall"]["pct"] is None
    assert data["bump_detection"] == {"hits": 1, "of": 1, "pct": 100.0, "wrong": []}
    assert set(data["timing_ms"]) == {"median", "p95", "total"}
    assert (
        0 <= data["timing_ms"]["median"] <= data["timing_ms"]["p95"] <= data["timing_ms"]["total"]
    )
    assert data["services_touched"] == {"hits": 4, "of": 4, "pct": 100.0, "wrong": []}
    assert data["notes"] == []


@pytest.mark.usefixtures("clean_env")
def test_json_lists_misses_and_false_escalations_with_their_reasons(
    capsys: pytest.CaptureFixture[str], pinned: Path
) -> None:
    data = json.loads(cli(capsys, "--cases", "cases.jsonl", "--policy", str(pinned), "--json")[1])
    for name in ("summary", "review", "auth"):
        assert ids(data, name, "missed") == []
        assert ids(data, name, "false_escalations") == ["two-services-db-pool"]
    for name in ("crypto", "payments", "infra", "deps", "ci"):
        assert ids(data, name, "missed") == ids(data, name, "false_escalations") == []
    summary = data["rows"][0]
    assert summary["false_escalations"] == [
        {
            "id": "two-services-db-pool",
            "label": "routine",
            "note": DB_POOL_NOTE,
            "reasons": [{"trigger": "sensitive_path", "evidence": SESSION}],
        }
    ]
    auth = data["rows"][2]
    assert auth["false_escalations"][0]["label"] == "no category"
    assert auth["false_escalations"][0]["reasons"] == summary["false_escalations"][0]["reasons"]


@pytest.mark.usefixtures("clean_env")
def test_text_report_prints_the_table_then_the_misses(
    capsys: pytest.CaptureFixture[str], pinned: Path
) -> None:
    code, out, err = cli(capsys, "--cases", "cases.jsonl", "--policy", str(pinned))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[: len(TABLE)] == TABLE
    assert lines[len(TABLE)].startswith("timing:            median ")
    assert lines[len(TABLE) + 1 :] == [
        "",
        "summary: false escalations: 1 of 2",
        "  - two-services-db-pool — label: routine",
        f"    note: {DB_POOL_NOTE}",
        f"    fired: sensitive_path: {SESSION}",
        "",
        "review: false escalations: 1 of 2",
        "  the same cases as summary above",
        "",
        "auth: false flags: 1 of 2",
        "  - two-services-db-pool — label: no category",
        f"    note: {DB_POOL_NOTE}",
        f"    fired: sensitive_path: {SESSION}",
    ]


@pytest.mark.usefixtures("clean_env")
def test_misses_option_limits_each_list(capsys: pytest.CaptureFixture[str], pinned: Path) -> None:
    out = cli(capsys, "--cases", "cases.jsonl", "--policy", str(pinned), "--misses", "0")[1]
    assert "false escalations" not in out and "false flags" not in out
    lines = out.splitlines()
    assert lines[: len(TABLE)] == TABLE
    assert len(lines) == len(TABLE) + 1 and lines[-1].startswith("timing:            median ")


def test_pyjwt_major_bump_is_caught_through_the_dependency_knowledge_base(pinned: Path) -> None:
    (bump,) = [c for c in evaluate.load([str(CASES)]) if c.case.id == "pyjwt-major-bump"]
    done = evaluate.outcome(bump, load_policy(pinned), ("summary", "deps"), None)
    summary = done.decisions["summary"]
    assert summary.categories == ("auth", "crypto")
    assert [(r.trigger, r.category) for r in summary.reasons] == [
        ("sensitive_dependency", "auth"),
        ("sensitive_dependency", "crypto"),
    ]
    assert all(
        r.evidence.startswith("requirements.txt:2 pyjwt 1.7.1 → 2.8.0") for r in summary.reasons
    )
    assert [r.trigger for r in done.decisions["deps"].reasons] == ["major_version_bump"]


def test_render_lists_a_missed_case_with_why_not() -> None:
    entry = Entry("case-x", "sensitive (auth)", "Checks a token.", ())
    row = Row("summary", "task", 1, 1, Ratio(0, 1), Ratio(0, 0), (entry,), ())
    report = scoring.Report(1, ("summary",), (row,), {}, scoring.Timing(1.0, 1.0, 1.0))
    lines = evaluate.render(report, ["x.jsonl"]).splitlines()
    assert lines[lines.index("summary: missed sensitive changes: 1 of 1") :] == [
        "summary: missed sensitive changes: 1 of 1",
        "  - case-x — label: sensitive (auth)",
        "    note: Checks a token.",
        "    why not: no trigger fired",
    ]


def test_render_says_how_many_more_a_list_holds() -> None:
    entries = tuple(Entry(f"case-{n}", "routine", "", ()) for n in range(3))
    row = Row("summary", "task", 3, 0, Ratio(0, 0), Ratio(3, 3), (), entries)
    timing = scoring.Timing(1.0, 2.0, 3.0)
    report = scoring.Report(3, ("summary",), (row,), {}, timing)
    lines = evaluate.render(report, ["x.jsonl"], limit=2).splitlines()
    tail = lines[lines.index("summary: false escalations: 3 of 3") :]
    assert tail == [
        "summary: false escalations: 3 of 3",
        "  - case-0 — label: routine",
        "    fired: no trigger fired",
        "  - case-1 — label: routine",
        "    fired: no trigger fired",
        "  … and 1 more (--misses to show more)",
    ]


@pytest.mark.usefixtures("clean_env")
def test_task_option_scores_only_the_chosen_tasks(
    capsys: pytest.CaptureFixture[str], pinned: Path
) -> None:
    args = ("--cases", "cases.jsonl", "--policy", str(pinned), "--json")
    data = json.loads(cli(capsys, *args, "--task", "deps")[1])
    assert figures(data) == [ROWS[6]]
    assert "services_touched" not in data and data["notes"] == []
    data = json.loads(cli(capsys, *args, "--task", "ci", "--task", "review", "--task", "ci")[1])
    assert [r["name"] for r in data["rows"]] == ["ci", "review", *CATEGORIES]
    assert "bump_detection" not in data


@pytest.mark.usefixtures("clean_env")
def test_repo_config_is_merged_onto_the_policy(
    capsys: pytest.CaptureFixture[str], pinned: Path, tmp_path: Path
) -> None:
    config = tmp_path / "cibot.yml"
    config.write_text("sensitive:\n  payments:\n    paths: ['services/b/**']\n", encoding="utf-8")
    args = ("--cases", "cases.jsonl", "--policy", str(pinned), "--config", str(config), "--json")
    data = json.loads(cli(capsys, *args)[1])
    assert dict((r[0], r[4]) for r in figures(data))["payments"] == (1, 4)
    assert ids(data, "payments", "false_escalations") == ["two-services-db-pool"]


def write_cases(folder: Path, *cases: Mapping[str, Any] | str) -> Path:
    """Write a cases file whose diffs point back at the fixtures' diffs."""
    path = folder / "cases.jsonl"
    lines = [c if isinstance(c, str) else json.dumps(c) for c in cases]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def good(**changes: Any) -> dict[str, Any]:
    """Return the docs case with the given keys changed (None removes a key)."""
    case: dict[str, Any] = json.loads(CASES.read_text(encoding="utf-8").splitlines()[1])
    case["diff"] = str(FIXTURES / case["diff"])
    case.update(changes)
    return {k: v for k, v in case.items() if v is not None or k == "dependency_bump"}


BAD: dict[str, tuple[list[Mapping[str, Any] | str], str]] = {
    "missing-key": (
        [{k: v for k, v in good().items() if k != "categories"}],
        "cases.jsonl:1: case 'docs-token-prose': missing required key 'categories'",
    ),
    "not-an-object": (["[1, 2]"], "cases.jsonl:1: a case must be a JSON object"),
    "sensitive-not-bool": ([good(sensitive="yes")], "'sensitive' must be true or false"),
    "bare-string-categories": ([good(categories="auth")], "'categories' must be a list of"),
    "unknown-category": ([good(categories=["authz"])], "unknown category 'authz': use auth,"),
    "bad-bump": ([good(dependency_bump={"package": "x"})], "'dependency_bump' must be null or"),
    "duplicate-id": ([good(), good()], "cases.jsonl:2: case id 'docs-token-prose' repeats"),
    "missing-diff": (
        [good(diff="diffs/gone.diff")],
        "case 'docs-token-prose': diffs/gone.diff does not exist; run "
        "`python tests/corpus/rebuild.py --mirrors ROOT`",
    ),
    "missing-tree": (
        [good(tree="trees/gone")],
        "case 'docs-token-prose': trees/gone/PATHS does not exist; run `python tests/corpus",
    ),
    "not-a-diff": (
        [good(diff=str(FIXTURES / "cases.jsonl"))],
        "case 'docs-token-prose': ",
    ),
}


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_cases_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    cases, words = BAD[name]
    code, out, err = cli(capsys, "--cases", str(write_cases(tmp_path, *cases)))
    assert (code, out) == (2, "")
    assert err.startswith("cibot eval: ") and err.count("\n") == 1, err
    assert words in err
    if name == "not-a-diff":
        assert "is not a unified diff" in err


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--cases", "malformed.jsonl"), "malformed.jsonl:2: not valid JSON (Expecting value"),
        (("--cases", "absent.jsonl"), "cannot read absent.jsonl: No such file or directory"),
        (("--cases", "cases.jsonl", "--task", "tests"), "cannot score task 'tests': choose"),
        (("--cases", "cases.jsonl", "--misses", "-1"), "--misses must be 0 or more"),
        (("--cases", "cases.jsonl", "--cases", "cases.jsonl"), "cases.jsonl:1: case id"),
        (("--cases", "cases.jsonl", "--config", "absent.yml"), "cannot read absent.yml"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], words: str
) -> None:
    code, out, err = cli(capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("cibot eval: ") and err.count("\n") == 1, err
    assert words in err


@pytest.mark.usefixtures("clean_env")
def test_empty_diff_names_the_case(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "empty.diff").write_bytes(b"")
    cases = write_cases(tmp_path, good(diff="empty.diff"))
    code, _, err = cli(capsys, "--cases", str(cases))
    assert code == 2
    assert "case 'docs-token-prose': empty.diff: the diff is empty" in err


@pytest.mark.parametrize(
    ("found", "labelled", "same"),
    [
        ("pyjwt", "PyJWT", True),
        ("typing-extensions", "typing_extensions", True),
        ("zope-interface", "zope.interface", True),
        ("github.com/foo/bar", "github.com/foo/bar/v2", True),
        ("@types/node", "@types/Node", True),
        ("requests", "requests-oauthlib", False),
    ],
)
def test_package_names_compare_normalised(found: str, labelled: str, same: bool) -> None:
    assert scoring.same_package(found, labelled) is same


@pytest.mark.parametrize(
    ("found", "labelled", "same"),
    [("2.8.0", "v2.8.0", True), ("v1.2", "1.2", True), ("1.2", "1.2.0", False)],
)
def test_versions_tolerate_a_v_prefix(found: str, labelled: str, same: bool) -> None:
    assert scoring.same_version(found, labelled) is same


def test_wrong_bump_label_is_listed_with_what_was_detected(tmp_path: Path) -> None:
    bump = {"package": "PyJWT", "from": "1.7.1", "to": "2.9.0", "breaking": True}
    case = good(id="pyjwt", diff=str(FIXTURES / "diffs/pyjwt_bump.diff"), dependency_bump=bump)
    located = evaluate.load([str(write_cases(tmp_path, case))])
    report = evaluate.evaluate(located, load_policy(), ("deps",))
    check = report.checks["bump_detection"]
    assert check is not None and check.ratio == Ratio(0, 1)
    assert check.wrong[0].reasons == (
        Reason("detected_bump", "requirements.txt:2 pyjwt 1.7.1 → 2.8.0"),
    )


def test_timing_reports_median_p95_and_total() -> None:
    timing = scoring.timing([0.001 * n for n in range(1, 21)])
    assert (timing.median_ms, timing.p95_ms, timing.total_ms) == pytest.approx((10.5, 19, 210))
    assert scoring.timing([]) == scoring.Timing(0.0, 0.0, 0.0)


def test_ci_sees_every_changed_path_and_names_the_services_it_traced() -> None:
    located = [c for c in evaluate.load([str(CASES)]) if c.case.id == "two-services-db-pool"]
    report = evaluate.evaluate(located, load_policy(), ("ci",))
    assert report.rows[0].recall == Ratio(1, 1)
    one = dataclasses.replace(located[0].case, services_touched=("a",))
    plain = [dataclasses.replace(located[0], case=one)]
    flagged = evaluate.evaluate(plain, load_policy(), ("ci",)).rows[0].false_hits
    assert flagged[0].reasons[-1] == Reason(
        "ci_services",
        "failed paths trace to: "
        "a (services/a/db/session.py is under the service root services/), "
        "b (services/b/handlers.py is under the service root services/)",
    )


class FakeServices:
    """Stand in for policies.services: every top-level folder under services/ is a service."""

    def __init__(self) -> None:
        """Record what discovery was asked."""
        self.discovered: list[list[str]] = []

    def discover(self, paths: Any, read: Any) -> ServiceMap:
        """Map each service folder that holds a Dockerfile it can read, as the real API does."""
        paths = list(paths)
        self.discovered.append(paths)
        return ServiceMap(
            tuple(
                ServiceEntry(p.split("/")[1], folders=(p.rsplit("/", 1)[0],), evidence=(p,))
                for p in paths
                if p.startswith("services/") and p.endswith("/Dockerfile") and read(p)
            )
        )

    def touched(self, evidence: Evidence, policy: Policy) -> dict[str, str]:
        """Name the service folder of each changed path."""
        return {
            c.path.split("/")[1]: c.path for c in evidence.files if c.path.startswith("services/")
        }


def test_service_discovery_scores_touched_services_when_present() -> None:
    fake = FakeServices()
    api = evaluate.ServicesApi(discover=fake.discover, touched=fake.touched)
    located = evaluate.load([str(CASES)])
    report = evaluate.evaluate(located, load_policy(), services=api)
    check = report.checks["services_touched"]
    assert check is not None and check.ratio == Ratio(4, 4) and report.notes == ()
    assert len(fake.discovered) == 1 and "services/b/Dockerfile" in fake.discovered[0]
    # The discovered map reaches the ci trigger: the failure traces by folder, not by root.
    (pool,) = [c for c in located if c.case.id == "two-services-db-pool"]
    done = evaluate.outcome(pool, load_policy(), ("ci",), api)
    assert done.ci_services == {
        "a": "services/a/db/session.py is in its folder services/a/",
        "b": "services/b/handlers.py is in its folder services/b/",
    }


def test_without_service_discovery_the_report_says_so() -> None:
    report = evaluate.evaluate(evaluate.load([str(CASES)]), load_policy(), services=None)
    assert report.checks["services_touched"] is None
    assert report.notes == (evaluate.NO_SERVICES,)


def test_tree_reader_reads_saved_files_and_nothing_outside() -> None:
    read = evaluate.reader(FIXTURES / "trees" / "two-services")
    assert (read("services/a/Dockerfile") or "").startswith("FROM python:3.12-slim")
    assert read("services/a/app.py") is None
    assert read("../../cases.jsonl") is None
    assert read("/etc/hostname") is None


def test_real_service_discovery_matches_the_labels() -> None:
    api = evaluate.services_api()
    assert api is not None, "policies.services should provide discover and touched"
    located = evaluate.load([str(CASES)])
    report = evaluate.evaluate(located, load_policy(), services=api)
    check = report.checks["services_touched"]
    assert check is not None and check.ratio == Ratio(4, 4) and check.wrong == (), check
    assert report.notes == ()
    (pool,) = [c for c in located if c.case.id == "two-services-db-pool"]
    done = evaluate.outcome(pool, load_policy(), ("ci",), api)
    assert done.touched == {"a": "services/a/db/session.py", "b": "services/b/handlers.py"}
    assert done.ci_services == {
        "a": "services/a/db/session.py is in its folder services/a/",
        "b": "services/b/handlers.py is in its folder services/b/",
    }


# The real command, as users run it: the console script beside this interpreter.
def command() -> list[str]:
    """Return the `cibot` console script, or `python -m bot.cli` where it is not installed."""
    script = shutil.which("cibot", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "bot.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `cibot eval` in the fixtures folder with a clean CIBOT_* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return subprocess.run(
        [*command(), "eval", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=FIXTURES,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def runs(pinned: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run the real command a few ways, two at a time."""
    wanted = {
        "text": ("--cases", "cases.jsonl", "--policy", str(pinned)),
        "json-default-policy": ("--cases", "cases.jsonl", "--json"),
        "malformed": ("--cases", "malformed.jsonl"),
        "missing": ("--cases", "absent.jsonl", "--json"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_cli, *args) for name, args in wanted.items()}
        return {name: future.result() for name, future in futures.items()}


def test_cli_prints_the_table(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    done = runs["text"]
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[: len(TABLE)] == TABLE


def test_cli_json_under_the_default_policy(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    done = runs["json-default-policy"]
    assert (done.returncode, done.stderr) == (0, "")
    data = json.loads(done.stdout)
    assert data["cases"] == 4
    assert [row[:3] for row in figures(data)] == [row[:3] for row in ROWS]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("malformed", "cibot eval: malformed.jsonl:2: not valid JSON (Expecting value at column"),
        ("missing", "cibot eval: cannot read absent.jsonl: No such file or directory"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    runs: dict[str, subprocess.CompletedProcess[str]], name: str, words: str
) -> None:
    done = runs[name]
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(words) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
