"""Test service discovery, the services a diff touches, and the multi-service CI trigger.

The trees under fixtures/services/ are small repos written for these tests: a src/<svc>/
layout, a Compose repo, a deploy repo of multi-document Kubernetes manifests, a Helm chart
with values blocks, a Skaffold file, a single-service repo, and a repo with shared
libraries and a load generator. The CLI tests run the real `cibot` in subprocesses
against a real `git init` checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from policies import detectors, services
from policies.evidence import CiFacts, Evidence, FileChange, evidence_from_diff
from policies.loading import build_policy, default_policy_text, parse_yaml
from policies.model import Policy
from policies.routing import route
from policies.services import Block, Reader, ServiceMap, discover, outline, touched

TREES = Path(__file__).parent / "fixtures" / "services"
POLICY = build_policy(parse_yaml(default_policy_text(), source="default"), source="default")
KEYS = ["task", "tier", "model", "private_only", "reasons", "categories"]


def tree(name: str, unreadable: tuple[str, ...] = ()) -> tuple[list[str], Reader]:
    """Return a fixture tree's paths and a reader over its files (None for the unreadable)."""
    base = TREES / name
    paths = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    def read(path: str) -> str | None:
        target = base / path
        if path in unreadable or not target.is_file():
            return None
        return target.read_text(encoding="utf-8")

    return paths, read


def found(name: str, unreadable: tuple[str, ...] = ()) -> ServiceMap:
    """Discover a fixture tree's services."""
    return discover(*tree(name, unreadable))


def edit(
    path: str, added: Mapping[int, str] | None = None, removed: Mapping[int, str] | None = None
) -> FileChange:
    """Describe a change to one file: added lines by head number, removed by old number."""
    return FileChange(
        path=path,
        old_path=None,
        status="modified",
        binary=False,
        added=tuple(sorted((added or {}).items())),
        removed=tuple(sorted((removed or {}).items())),
        hunks=1,
    )


def evidence(
    *files: FileChange, services: ServiceMap | None = None, ci: CiFacts | None = None
) -> Evidence:
    """Build routing evidence for these changes."""
    return Evidence(files=files, services=services, ci=ci)


def policy_with(services_map: dict[str, Any]) -> Policy:
    """Return the default policy with this services map."""
    data = parse_yaml(default_policy_text(), source="default")
    data["services"] = services_map
    return build_policy(data, source="services")


def excluded(found_map: ServiceMap) -> dict[str, str]:
    """Return what discovery ruled out, and why."""
    return dict(found_map.excluded)


# ---- discovery ------------------------------------------------------------------------------


def test_src_layout_finds_sibling_services_and_rules_out_the_rest() -> None:
    result = found("src-layout")
    assert result.names() == ("cart", "orders", "ui")
    cart = result.get("cart")
    assert cart is not None
    assert (cart.folders, cart.evidence) == (("src/cart",), ("src/cart/Dockerfile",))
    why = excluded(result)
    assert why["src/loadgenerator"] == "smoke-test or load client"
    assert why["src/e2e"] == "tests"
    assert why["src/shared"].startswith("nothing deploys it")
    # A proxy image serving the folder's own build (ui: node build, then nginx) is a service.
    assert "src/ui" not in why


def test_compose_services_with_build_contexts_and_blocks() -> None:
    result = found("compose")
    assert result.names() == ("api", "web", "worker")
    api, worker, web = (result.get(name) for name in ("api", "worker", "web"))
    assert api is not None and worker is not None and web is not None
    assert "docker-compose.yml service 'api' builds ./api" in api.evidence
    assert "docker-compose.yml service 'worker' builds ./worker" in worker.evidence
    assert api.blocks == (Block("docker-compose.yml", 6, 12, "Compose service", "api", 2),)
    assert worker.blocks == (Block("docker-compose.yml", 14, 19, "Compose service", "worker", 2),)
    assert web.blocks == (Block("docker-compose.yml", 21, 26, "Compose service", "web", 2),)
    # mongo/ only adds an init script to the upstream image; db and queue build nothing.
    assert excluded(result)["mongo"] == "only configures the upstream image mongo:7"
    assert "docker-compose.yml" in result.parsed
    assert ".devcontainer/docker-compose.yml" not in result.parsed


def test_kubernetes_workloads_from_multi_document_manifests() -> None:
    result = found("k8s")
    assert result.names() == ("cart", "checkout", "frontend", "ledger")
    cart, ledger, frontend = (result.get(name) for name in ("cart", "ledger", "frontend"))
    assert cart is not None and ledger is not None and frontend is not None
    assert cart.evidence == ("kubernetes-manifests/shop.yaml Deployment 'cart'",)
    assert [(b.kind, b.start, b.end) for b in cart.blocks] == [
        ("Deployment", 2, 13),
        ("Service", 15, 21),
    ]
    # The migration Job runs the StatefulSet's own image: one service, not two.
    assert ledger.aliases == ("ledger-migrate",)
    assert frontend.files == ("kubernetes-manifests/frontend.yaml",)
    why = excluded(result)
    assert why["redis-cart"].startswith("runs the upstream image redis:7-alpine")
    assert why["log-shipper"].startswith("runs the upstream image fluent/fluent-bit:3.1")
    assert why["loadgenerator"].startswith("smoke-test or load client")


def test_helm_values_blocks_in_a_chart_whose_templates_use_them() -> None:
    result = found("helm")
    assert result.names() == ("adservice", "cartservice", "frontend")
    cart, ads = result.get("cartservice"), result.get("adservice")
    assert cart is not None and ads is not None
    assert Block("helm-chart/values.yaml", 9, 15, "Helm values", "cartService") in cart.blocks
    # adService has no folder here: its values block and its template make it a service.
    assert ads.folders == ()
    assert "helm-chart/values.yaml Helm values block 'adService'" in ads.evidence
    why = excluded(result)
    assert why["loadGenerator"].startswith("smoke-test or load client")
    assert why["redis"].startswith("runs redis")
    named = {b.name for entry in result.services for b in entry.blocks}
    assert not named & {"images", "networkPolicies"}


def test_skaffold_artifacts_name_their_folders() -> None:
    result = found("skaffold")
    assert result.names() == ("cartservice", "emailservice")
    cart = result.get("cartservice")
    assert cart is not None
    assert cart.folders == ("src/cartservice",)  # the context is src/cartservice/src
    assert "skaffold.yaml artifact 'cartservice' builds src/cartservice/src" in cart.evidence
    assert cart.blocks == (Block("skaffold.yaml", 9, 12, "Skaffold artifact", "cartservice", 2),)
    assert excluded(result)["src/loadgenerator"] == "smoke-test or load client"


def test_a_single_service_repo_has_none() -> None:
    result = found("single")
    assert result.services == ()
    assert excluded(result)["single"] == "the only service: a single-service repo has none"


def test_shared_libraries_and_a_load_generator_are_not_services() -> None:
    result = found("shared-lib")
    assert result.names() == ("api", "billing")
    why = excluded(result)
    assert why["services/common"].startswith("nothing deploys it")
    assert why["lib/auth"].startswith("nothing deploys it")
    assert why["loadgenerator"] == "smoke-test or load client"
    assert why["tools/release"] == "tooling"


def test_dotnet_projects_tell_apps_from_libraries_by_their_sdk() -> None:
    projects = {
        "src/Basket.API/Basket.API.csproj": '<Project Sdk="Microsoft.NET.Sdk.Web">',
        "src/OrderProcessor/OrderProcessor.csproj": (
            '<Project Sdk="Microsoft.NET.Sdk"><OutputType>Exe</OutputType>'
        ),
        "src/EventBus/EventBus.csproj": '<Project Sdk="Microsoft.NET.Sdk">',
        "src/Shop.AppHost/Shop.AppHost.csproj": '<Sdk Name="Aspire.AppHost.Sdk" />',
        "src/ClientApp/ClientApp.csproj": "<Project><UseMaui>true</UseMaui></Project>",
    }
    result = discover(list(projects), projects.get)
    assert result.names() == ("Basket.API", "OrderProcessor")
    why = excluded(result)
    assert why["src/EventBus"] == "a shared library"
    assert why["src/Shop.AppHost"] == "orchestrates the other services"
    assert why["src/ClientApp"] == "a client app, not deployed as a service"


def test_unreadable_deploy_files_still_leave_the_folders() -> None:
    result = found("compose", unreadable=("docker-compose.yml",))
    assert result.names() == ("api", "web", "worker")
    assert "docker-compose.yml" not in result.parsed
    assert all(entry.blocks == () for entry in result.services)


def test_a_reader_that_fails_leaves_that_file_unread() -> None:
    paths, read = tree("compose")

    def failing(path: str) -> str | None:
        if path == "docker-compose.yml":
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return read(path)

    result = discover(paths, failing)
    assert result.names() == ("api", "web", "worker")
    assert "docker-compose.yml" not in result.parsed


def test_outline_keeps_keys_items_and_line_numbers() -> None:
    text = (
        "# top\n"
        "services:\n"
        '  "api":  # quoted key\n'
        "    image: 'ghcr.io/acme/api:1'  # pinned\n"
        "containers:\n"
        "- name: app\n"
        "  image: app\n"
        "---\n"
        "kind: Service\n"
    )
    nodes = outline(text)
    assert [(n.line, n.col, n.key, n.value, n.dash) for n in nodes if not n.doc] == [
        (2, 0, "services", "", None),
        (3, 2, "api", "", None),
        (4, 4, "image", "ghcr.io/acme/api:1", None),
        (5, 0, "containers", "", None),
        (6, 2, "name", "app", 0),
        (7, 2, "image", "app", None),
        (9, 0, "kind", "Service", None),
    ]
    containers = next(i for i, n in enumerate(nodes) if n.key == "containers")
    assert services.subtree_end(nodes, containers) == 6  # the compact list is its child
    assert [nodes[i].key for i in services.children(nodes, containers)] == ["name"]


def test_discovery_on_a_200k_path_tree_takes_well_under_a_second() -> None:
    paths: list[str] = []
    files: dict[str, str] = {}
    for i in range(300):
        name = f"svc{i:03d}"
        files[f"src/{name}/Dockerfile"] = "FROM golang:1.22\n"
        files[f"k8s/{name}.yaml"] = (
            f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n"
            f"spec:\n  template:\n    spec:\n      containers:\n      - image: {name}\n"
        )
        paths += [f"src/{name}/Dockerfile", f"src/{name}/go.mod", f"k8s/{name}.yaml"]
        paths += [f"src/{name}/pkg/m{j % 17}/f{j}.go" for j in range(300)]
    while len(paths) < 200_000:
        paths.append(f"packages/p{len(paths) % 900}/src/deep/{len(paths)}.ts")
    start = time.perf_counter()
    result = discover(paths, files.get)
    elapsed = time.perf_counter() - start
    assert len(result.services) == 300
    assert elapsed < 1.0, f"discovery took {elapsed:.2f}s"


# ---- configured services over discovered ones -----------------------------------------------


def test_configured_entries_win_and_keep_service_roots() -> None:
    policy = policy_with(
        {
            "cart": {"paths": ["src/cart/**"], "jobs": ["cart-*"]},
            "storefront": {"paths": ["src/ui/**"]},
        }
    )
    merged = services.merge(found("src-layout"), policy)
    assert [(e.name, e.source) for e in merged.services] == [
        ("cart", "configured"),
        ("orders", "discovered"),
        ("storefront", "configured"),
    ]
    assert dict(merged.excluded)["ui"] == "the configured service 'storefront' covers it"
    lookup = found("src-layout")
    assert services.services_of_path("src/ui/app.ts", policy, lookup) == {"storefront"}
    assert services.services_of_path("src/orders/pom.xml", policy, lookup) == {"orders"}
    assert services.services_of_path("services/pay/a.py", policy, lookup) == {"pay"}
    assert services.services_of_job("cart-unit", policy, lookup) == {"cart"}


# ---- which services a diff touches ----------------------------------------------------------


def test_touched_by_folder_while_repo_wide_files_touch_nothing() -> None:
    changes = (
        edit("src/cart/main.go", {3: "func main() { run() }"}),
        edit(".github/workflows/ci.yml", {4: "jobs: {build: {}}"}),
        edit("terraform/main.tf", {1: 'terraform { required_version = ">= 1.9" }'}),
        edit("README.md", {1: "# The shop"}),
        edit("src/loadgenerator/locustfile.py", {1: "import locust"}),
    )
    assert touched(evidence(*changes, services=found("src-layout")), POLICY) == {
        "cart": "src/cart/main.go"
    }


def test_touched_compose_blocks_by_head_line() -> None:
    compose = found("compose")
    ports = edit("docker-compose.yml", {9: '      - "8081:8080"'}, {9: '      - "8080:8080"'})
    assert touched(evidence(ports, services=compose), POLICY) == {
        "api": "docker-compose.yml:9 Compose service block 'api'"
    }
    logging = edit("docker-compose.yml", {3: "  driver: local"}, {3: "  driver: json-file"})
    assert touched(evidence(logging, services=compose), POLICY) == {}
    both = edit(
        "docker-compose.yml", {17: "      dockerfile: Dockerfile", 24: "      context: web"}
    )
    assert set(touched(evidence(both, services=compose), POLICY)) == {"worker", "web"}


def test_a_removed_last_line_of_a_block_belongs_to_that_block() -> None:
    # The old file had one more line after worker's QUEUE_URL (old line 20); it is gone.
    gone = edit("docker-compose.yml", removed={20: "      DEBUG: '1'"})
    assert touched(evidence(gone, services=found("compose")), POLICY) == {
        "worker": "docker-compose.yml:19 Compose service block 'worker'"
    }


def test_a_removed_block_key_belongs_to_the_next_block_not_the_one_above() -> None:
    text = "services:\n  api:\n    build: ./api\n  web:\n    build: ./web\n"
    files = {"api/Dockerfile": "FROM python:3.12\n", "web/Dockerfile": "FROM node:20\n"}
    files["docker-compose.yml"] = text
    mapped = discover(sorted(files), files.get)
    # "  frontend:" became "  web:" on line 4, right after api's last line.
    renamed = edit("docker-compose.yml", {4: "  web:"}, {4: "  frontend:"})
    assert touched(evidence(renamed, services=mapped), POLICY) == {
        "web": "docker-compose.yml:4 Compose service block 'web'"
    }
    # An indented line dropped from the end of api's block is api's.
    dropped = edit("docker-compose.yml", removed={4: "    restart: always"})
    assert touched(evidence(dropped, services=mapped), POLICY) == {
        "api": "docker-compose.yml:3 Compose service block 'api'"
    }


def test_head_lines_places_removed_lines_between_head_lines() -> None:
    change = edit("f.yaml", added={1: "a", 2: "b", 6: "x"}, removed={3: "old", 5: "old2"})
    added, removed = services.head_lines(change)
    assert added == [1, 2, 6]
    # Old lines 1-2 survive as head 3-4; old 3 sat after head 4; old 4 is head 5, old 5 after it.
    assert removed == [(4, "old"), (5, "old2")]


def test_touched_helm_values_kubernetes_and_skaffold_blocks() -> None:
    replicas = edit("helm-chart/values.yaml", {12: "  replicaCount: 3"}, {12: "  replicaCount: 2"})
    registry = edit("helm-chart/values.yaml", {3: "  repository: ghcr.io/acme/shop2"})
    assert touched(evidence(replicas, registry, services=found("helm")), POLICY) == {
        "cartservice": "helm-chart/values.yaml:12 Helm values block 'cartService'"
    }
    k8s = found("k8s")
    image = edit("kubernetes-manifests/shop.yaml", {13: "        image: ghcr.io/acme/cart:1.5.0"})
    redis = edit("kubernetes-manifests/shop.yaml", {41: "        image: redis:7.4-alpine"})
    own = edit("kubernetes-manifests/frontend.yaml", {17: "  type: ClusterIP"})
    assert touched(evidence(image, redis, own, services=k8s), POLICY) == {
        "cart": "kubernetes-manifests/shop.yaml:13 Deployment block 'cart'",
        "frontend": "kubernetes-manifests/frontend.yaml",
    }
    context = edit("skaffold.yaml", {10: "    context: src/cartservice"})
    assert touched(evidence(context, services=found("skaffold")), POLICY) == {
        "cartservice": "skaffold.yaml:10 Skaffold artifact block 'cartservice'"
    }


def test_an_unreadable_deploy_file_falls_back_to_the_hunk() -> None:
    compose = found("compose", unreadable=("docker-compose.yml",))
    change = edit(
        "docker-compose.yml", {16: "      context: ./worker/cmd"}, {16: "      context: ./worker"}
    )
    assert touched(evidence(change, services=compose), POLICY) == {
        "worker": "docker-compose.yml:16 names 'worker'"
    }


def test_touched_through_a_parsed_diff() -> None:
    diff = (
        "diff --git a/docker-compose.yml b/docker-compose.yml\n"
        "--- a/docker-compose.yml\n+++ b/docker-compose.yml\n"
        "@@ -25,3 +25,3 @@\n"
        "     ports:\n"
        '-      - "8080:80"\n'
        '+      - "80:80"\n'
        " \n"
    )
    parsed = replace(evidence_from_diff(diff), services=found("compose"))
    assert touched(parsed, POLICY) == {"web": "docker-compose.yml:26 Compose service block 'web'"}


def test_without_a_checkout_touched_infers_src_siblings() -> None:
    layout = (edit("src/cart/go.mod", {3: "go 1.23"}), edit("src/orders/src/App.java", {1: "x"}))
    assert touched(evidence(*layout), POLICY) == {
        "cart": "src/cart/go.mod",
        "orders": "src/orders/src/App.java",
    }
    one_app = (edit("src/components/Button.tsx", {1: "x"}), edit("src/pages/Home.tsx", {1: "x"}))
    assert touched(evidence(*one_app), POLICY) == {}


# ---- the multi-service trigger --------------------------------------------------------------


def test_failing_services_from_job_names_and_failed_paths() -> None:
    ci = CiFacts(
        failed_jobs=("build (cart)", "lint", "cartography"),
        failed_paths=("src/orders/src/main/java/shop/App.java:12",),
    )
    failing = services.failing_services(evidence(services=found("src-layout"), ci=ci), POLICY)
    assert failing == {
        "cart": "job 'build (cart)' names it ('cart')",
        "orders": "src/orders/src/main/java/shop/App.java is in its folder src/orders/",
    }
    reasons = list(
        detectors.TRIGGERS["multi_service_failure"](
            evidence(ci=ci, services=found("src-layout")), POLICY
        )
    )
    assert [r.evidence for r in reasons] == [
        "service 'cart' fails: job 'build (cart)' names it ('cart')",
        "service 'orders' fails: src/orders/src/main/java/shop/App.java is in its folder src/orders/",
    ]


def test_a_failed_shared_deploy_file_blames_the_blocks_the_diff_changes() -> None:
    compose = found("compose")
    change = edit(
        "docker-compose.yml", {9: '      - "8081:8080"', 17: "      dockerfile: Dockerfile.dev"}
    )
    no_line = evidence(change, services=compose, ci=CiFacts(failed_paths=("docker-compose.yml",)))
    assert services.failing_services(no_line, POLICY) == {
        "api": "docker-compose.yml failed, and the diff changes docker-compose.yml:9 Compose "
        "service block 'api'",
        "worker": "docker-compose.yml failed, and the diff changes docker-compose.yml:17 Compose "
        "service block 'worker'",
    }
    assert len(list(services.multi_service_failure(no_line, POLICY))) == 2
    at_line = replace(no_line, ci=CiFacts(failed_paths=("docker-compose.yml:16",)))
    assert services.failing_services(at_line, POLICY) == {
        "worker": "docker-compose.yml:16 Compose service block 'worker'"
    }
    assert list(services.multi_service_failure(at_line, POLICY)) == []


def test_routing_escalates_ci_for_a_failure_across_discovered_services() -> None:
    ci = CiFacts(failed_paths=("src/cart/main.go", "src/ui/static/index.html"))
    decision = route("ci", evidence(services=found("src-layout"), ci=ci), POLICY)
    assert decision.tier == "frontier"
    assert [r.trigger for r in decision.reasons] == ["multi_service_failure"] * 2
    one = route("ci", evidence(services=found("src-layout"), ci=CiFacts(("build (cart)",))), POLICY)
    assert one.tier == "local"
    single = CiFacts(failed_paths=("src/index.js", "src/components/Button.jsx"))
    assert route("ci", evidence(services=found("single"), ci=single), POLICY).tier == "local"


@pytest.mark.parametrize(
    ("paths", "fires"),
    [
        (("src/cart/go.mod", "src/orders/src/main/java/shop/App.java"), True),
        (("cart/package.json", "payment/requirements.txt"), True),
        (("K8s/templates/cart-deployment.yaml", "K8s/templates/user-deployment.yaml"), True),
        (("src/components/Button.tsx", "src/pages/Home.tsx"), False),
        (("src/jwe/encrypt.ts", "src/jwt/encrypt.ts"), False),
        (("k8s/db.yml", "k8s/petclinic.yml"), False),
        (("docs/api.md", "README.md"), False),
    ],
)
def test_without_a_checkout_the_trigger_reads_the_diffs_own_paths(
    paths: tuple[str, ...], fires: bool
) -> None:
    changes = tuple(edit(path, {1: "changed"}) for path in paths)
    facts = evidence(*changes, ci=CiFacts(failed_paths=paths))
    assert bool(list(detectors.multi_service_failure(facts, POLICY))) is fires


def test_the_detectors_names_still_work() -> None:
    policy = policy_with({"api": {"paths": ["backend/**"], "jobs": ["test-api*"]}})
    assert detectors.services_of_path("backend/views.py", policy) == {"api"}
    assert detectors.services_of_job("test-api (3.12)", policy) == {"api"}
    ci = CiFacts(failed_jobs=("test-api",), failed_paths=("services/web/a.ts",))
    assert detectors.failing_services(evidence(ci=ci), policy) == {
        "api": "job 'test-api' matches 'test-api*'",
        "web": "services/web/a.ts is under the service root services/",
    }


# ---- the command line, against a real git checkout ------------------------------------------


def git(repo: Path, *args: str) -> None:
    """Run git in a test checkout."""
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
    )


def cibot(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `cibot` command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


CLI_DIFF = (
    "diff --git a/src/cart/main.go b/src/cart/main.go\n"
    "--- a/src/cart/main.go\n+++ b/src/cart/main.go\n"
    "@@ -1,3 +1,3 @@\n package main\n \n-func main() {}\n+func main() { serve() }\n"
)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Make a git checkout of the src/ layout tree and run every CLI case against it."""
    work = tmp_path_factory.mktemp("services-cli")
    repo = work / "shop"
    shutil.copytree(TREES / "src-layout", repo)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "shop")
    (work / "plain").mkdir()
    (work / "change.diff").write_text(CLI_DIFF, encoding="utf-8")
    facts = {"ci": {"failed_jobs": ["build (cart)", "build (orders)"], "failed_paths": []}}
    (work / "facts.json").write_text(json.dumps(facts), encoding="utf-8")
    route = ("route", "--diff", "change.diff", "--task", "ci", "--facts", "facts.json", "--json")
    cases = {
        "json": ("services", "--repo", "shop", "--json"),
        "human": ("services", "--repo", "shop/src"),
        "route-repo": (*route, "--repo", "shop"),
        "route-plain": route,
        "not-git": ("services", "--repo", "plain"),
        "missing": ("services", "--repo", "nowhere"),
        "route-missing": (*route, "--repo", "nowhere"),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(cibot, work, *args) for name, args in cases.items()}
        return {name: future.result() for name, future in futures.items()}


def test_services_json_lists_the_merged_map(
    cli: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    done = cli["json"]
    assert (done.returncode, done.stderr) == (0, "")
    data = json.loads(done.stdout)
    assert [s["name"] for s in data["services"]] == ["cart", "orders", "ui"]
    cart = data["services"][0]
    assert (cart["source"], cart["folders"], cart["evidence"]) == (
        "discovered",
        ["src/cart"],
        ["src/cart/Dockerfile"],
    )
    assert {"name": "src/loadgenerator", "why": "smoke-test or load client"} in data["excluded"]
    assert data["service_roots"] == ["services/", "apps/", "packages/", "cmd/"]


def test_services_prints_each_service_and_why(
    cli: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    done = cli["human"]  # a folder inside the checkout reads the whole checkout
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "cart  [discovered]",
        "  folders:    src/cart/",
        "  evidence:   src/cart/Dockerfile",
    ]
    assert "not services:" in lines
    assert "  src/loadgenerator: smoke-test or load client" in lines


def test_route_repo_sees_the_checkouts_services(
    cli: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    done = cli["route-repo"]
    assert (done.returncode, done.stderr) == (0, "")
    data = json.loads(done.stdout)
    assert list(data) == KEYS
    assert (data["task"], data["tier"]) == ("ci", "frontier")
    assert data["reasons"] == [
        {
            "trigger": "multi_service_failure",
            "evidence": "service 'cart' fails: job 'build (cart)' names it ('cart')",
        },
        {
            "trigger": "multi_service_failure",
            "evidence": "service 'orders' fails: job 'build (orders)' names it ('orders')",
        },
    ]
    # Without the checkout the job names alone name no service.
    plain = json.loads(cli["route-plain"].stdout)
    assert list(plain) == KEYS and plain["tier"] == "local" and plain["reasons"] == []


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("not-git", "cibot services: --repo plain: not a git checkout"),
        ("missing", "cibot services: --repo nowhere: no such directory"),
        ("route-missing", "cibot route: --repo nowhere: no such directory"),
    ],
)
def test_bad_repo_exits_2_with_one_line(
    cli: dict[str, subprocess.CompletedProcess[str]], case: str, words: str
) -> None:
    done = cli[case]
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(words)
