"""Find a repo's services, the services a diff touches, and the services a CI failure spans.

The module is pure. ``discover(paths, read)`` takes the head tree's paths and a reader
that returns a file's text or None; nothing here opens a file or runs git. The routing
spec's "Services" section defines what counts: sibling folders that each build and deploy
on their own, plus their own blocks in shared deploy config (Compose, Kubernetes,
Skaffold, Helm values). Folders that only configure upstream images, shared libraries,
smoke-test and load clients, docs, examples and tests are not services, and a
single-service repo has none.
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from policies.evidence import Evidence, FileChange
from policies.globs import GlobSet, compiled
from policies.model import Policy
from policies.reasons import Reason

Reader = Callable[[str], str | None]


def _names(text: str) -> tuple[str, ...]:
    """Return the space-separated names in a text, in order."""
    return tuple(text.split())


def _set(text: str) -> frozenset[str]:
    """Return the space-separated names in a text as a set."""
    return frozenset(text.split())


# ---- what the tree's file names say ---------------------------------------------------------

BUILD_NAMES = frozenset(
    {
        "Dockerfile",
        "Containerfile",
        "package.json",
        "go.mod",
        "pyproject.toml",
        "setup.py",
        "requirements.txt",
        "Pipfile",
        "pom.xml",
        "build.gradle",
        "build.gradle.kts",
        "build.sbt",
        "Cargo.toml",
        "Gemfile",
        "mix.exs",
        "composer.json",
        "deno.json",
        "Package.swift",
        "Procfile",
        "app.yaml",
        "fly.toml",
        "serverless.yml",
        "serverless.yaml",
    }
)
DEPLOY_NAMES = frozenset(
    {"Containerfile", "Procfile", "app.yaml", "fly.toml", "serverless.yml", "serverless.yaml"}
)
DOTNET = (".csproj", ".fsproj", ".vbproj")
COMPOSE = re.compile(r"^(docker-)?compose([.-][^/]*)?\.ya?ml$")
SKAFFOLD = re.compile(r"^skaffold[^/]*\.ya?ml$")
VALUES = re.compile(r"^values[^/]*\.ya?ml$")
YAML = (".yaml", ".yml")
# Folder names that hold a service's build without naming it: src/cartservice/src/Dockerfile.
LIFT = frozenset({"src", "docker", "build", "container"})
# Parents whose children are deployables even when no Dockerfile says so.
SERVICE_PARENTS = _set(
    "services service apps applications microservices src cmd functions lambdas "
    "workers servers backends"
)
# Any folder on the way whose words say it is not a service.
NOT_SERVICE_WORDS: dict[str, str] = {
    **dict.fromkeys(("test", "tests", "testing", "e2e", "testdata", "fixtures", "spec"), "tests"),
    **dict.fromkeys(("docs", "doc", "documentation"), "docs"),
    **dict.fromkeys(("example", "examples", "sample", "samples"), "examples"),
    **dict.fromkeys(("scripts", "tools", "hack", "benchmarks", "bench", "buildsrc"), "tooling"),
    **dict.fromkeys(
        ("node_modules", "vendor", "third_party", "third-party", "external"), "vendored code"
    ),
}
LOAD_FOLDED = re.compile(r"loadgen|loadtest|locust|smoketest|stresstest|trafficgen")
LOAD_WORDS = frozenset({"load", "loader", "locust", "k6", "smoke", "stress", "soak", "jmeter"})
LIBRARY_WORDS = _set(
    "lib libs library libraries common commons shared pkg util utils sdk contracts "
    "contract domain infrastructure abstractions defaults components proto protos "
    "protobuf genproto"
)
ORCHESTRATOR = re.compile(r"apphost", re.IGNORECASE)
CLIENT_WORDS = frozenset({"android", "ios", "mobile", "electron", "desktop", "reactnative"})
# A .NET project named like this is an app when its .csproj cannot be read.
APP_WORDS = _set("api service svc processor worker web webapp app gateway server bff functions")
# Images a repo configures rather than builds: data stores, brokers, observability, proxies.
UPSTREAM = _set(
    "mongo mongodb mysql mariadb postgres postgresql postgis redis valkey memcached "
    "rabbitmq kafka cp-kafka zookeeper cp-zookeeper cassandra scylla couchbase "
    "couchdb elasticsearch opensearch kibana opensearch-dashboards logstash fluentd "
    "fluent-bit grafana prometheus alertmanager jaeger all-in-one zipkin "
    "opentelemetry-collector opentelemetry-collector-contrib otel-collector consul "
    "vault etcd nats minio localstack dynamodb-local keycloak influxdb "
    "clickhouse-server neo4j mssql/server pulsar activemq artemis mosquitto emqx "
    "flagd mailhog mailpit busybox pause"
)
PROXIES = _set("nginx nginx-unprivileged httpd haproxy caddy envoy traefik varnish kong openresty")
CODE = _names(
    ".html .js .mjs .ts .tsx .jsx .vue .svelte .css .py .go .java .kt .scala .rb .php "
    ".rs .cs .ex .lua .c .cc .cpp"
)
WORKLOADS = _names("Deployment StatefulSet DaemonSet Job CronJob Rollout DeploymentConfig")
KIND_WORDS = _set(
    "deployment deploy dep service svc statefulset sts daemonset ds job cronjob "
    "configmap cm secret secrets hpa pdb ingress networkpolicy network policy "
    "serviceaccount sa rbac role rolebinding pvc route virtualservice destinationrule "
    "sidecar authorizationpolicy k8s manifest manifests"
)
DEPLOY_DIR = re.compile(
    r"k8s|kube|manifest|deploy|kustomiz|helm|chart|overlay|gitops|argo|flux|openshift"
    r"|^(base|release|templates|infra|ops)$"
)
# Shapes of a Helm values block for one workload.
HELM_SHAPE = _set(
    "image replicaCount replicas resources service ports containerPort autoscaling "
    "deployment podAnnotations env livenessProbe"
)
# Words that name a CI step rather than a service, so never match a job by them.
CI_WORDS = _set(
    "build test tests lint deploy release docs docker ci check checks e2e integration "
    "unit main all image images"
)
# src/ children that are parts of one app, not services (used when there is no checkout).
GENERIC_SRC = _set(
    "main test tests it java kotlin scala resources lib libs common shared core utils "
    "util helpers internal components pages app hooks styles assets static public "
    "types models views controllers routes router services store features modules "
    "config constants layouts context contexts middleware schemas db generated gen "
    "proto bin scripts docs i18n locales __tests__ __mocks__ fixtures cli pkg cmd"
)
DATASTORE_WORDS = _set("db database cache queue broker storage")
MAX_TEXT = 1_000_000
MAX_MANIFESTS = 4000
MAX_TEMPLATES = 400
LINE_REF = re.compile(r"^(?P<path>.+?):(?P<line>\d+)(?::\d+)?$")
WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


# ---- the map --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """Locate one service's own block in a shared deploy file (lines start..end, 1-based)."""

    path: str
    start: int
    end: int
    kind: str  # "Compose service", "Skaffold artifact", "Helm values", or a Kubernetes kind
    name: str
    indent: int = 0  # the column of the block's first line (its key, or its list dash)

    def at(self, line: int) -> str:
        """Say where a change hits this block, as a reason's evidence."""
        return f"{self.path}:{line} {self.kind} block '{self.name}'"


@dataclass(frozen=True)
class ServiceEntry:
    """Describe one service: its folders, its own deploy blocks and files, and why."""

    name: str
    folders: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    blocks: tuple[Block, ...] = ()
    files: tuple[str, ...] = ()  # deploy files that are wholly this service's own manifest
    aliases: tuple[str, ...] = ()  # other names it goes by: Compose key, workload, image
    paths: tuple[str, ...] = ()  # configured gitignore-style globs
    jobs: tuple[str, ...] = ()  # configured CI job globs
    source: str = "discovered"  # discovered | configured | inferred


@dataclass(frozen=True)
class ServiceMap:
    """Hold a repo's services, the deploy files read for blocks, and what was ruled out."""

    services: tuple[ServiceEntry, ...] = ()
    parsed: frozenset[str] = frozenset()  # deploy files whose blocks come from their text
    excluded: tuple[tuple[str, str], ...] = ()  # (folder or name, why it is not a service)

    def names(self) -> tuple[str, ...]:
        """Return the service names, sorted."""
        return tuple(entry.name for entry in self.services)

    def get(self, name: str) -> ServiceEntry | None:
        """Return the named service, or None."""
        return next((entry for entry in self.services if entry.name == name), None)


# ---- a line outline of YAML, enough to find blocks and their line ranges --------------------


@dataclass(frozen=True, slots=True)
class Node:
    """One YAML content line: its number, key column, key, scalar value and list dash."""

    line: int
    col: int
    key: str | None
    value: str
    dash: int | None = None  # the column of a leading "- ", when the line starts an item
    doc: bool = False  # a "---" document marker


KEY = re.compile(r"""^(?P<key>"[^"]*"|'[^']*'|[^\s"'#{\[][^:#]*?)\s*:(?:\s+(?P<value>.*))?$""")
COMMENT = re.compile(r"\s+#.*$")


def outline(text: str) -> list[Node]:
    """Return the content lines of a YAML text (comments and blanks dropped), in order."""
    nodes: list[Node] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        if line.startswith(("---", "...")) and line[3:4] in ("", " "):
            nodes.append(Node(number, 0, None, "", doc=True))
            continue
        nodes.append(_node(number, line, stripped))
    return nodes


def _node(number: int, line: str, stripped: str) -> Node:
    """Parse one content line into a Node."""
    col = len(line) - len(stripped)
    dash = None
    if stripped == "-" or stripped.startswith("- "):
        dash = col
        rest = stripped[1:].lstrip(" ")
        col += len(stripped) - len(rest)
        stripped = rest
    found = KEY.match(stripped)
    if found is None:
        return Node(number, col, None, _scalar(stripped), dash)
    return Node(number, col, found.group("key").strip("\"'"), _scalar(found.group("value")), dash)


def _scalar(value: str | None) -> str:
    """Strip a trailing comment and quotes from a scalar value."""
    value = (value or "").strip()
    if not value or value.startswith("#"):
        return ""
    if value[:1] in ("'", '"'):
        return value[1:].split(value[0], 1)[0]
    return COMMENT.sub("", value)


def subtree_end(nodes: list[Node], index: int) -> int:
    """Return the index just past the node's subtree (its children and their children)."""
    node = nodes[index]
    limit = node.dash if node.dash is not None else node.col
    for j in range(index + 1, len(nodes)):
        other = nodes[j]
        if other.doc:
            return j
        if node.dash is not None:
            if (other.dash is not None and other.dash <= limit) or other.col <= limit:
                return j
        elif other.col <= limit and (other.dash is None or other.dash < limit):
            return j
    return len(nodes)


def children(nodes: list[Node], index: int) -> list[int]:
    """Return the indexes of a node's direct children (keys or list items)."""
    end = subtree_end(nodes, index)
    if index + 1 >= end:
        return []
    first = nodes[index + 1]
    if first.dash is not None and first.dash <= nodes[index].col + 2 and nodes[index].key:
        return [j for j in range(index + 1, end) if nodes[j].dash == first.dash]
    return [j for j in range(index + 1, end) if nodes[j].col == first.col and nodes[j].dash is None]


def child(nodes: list[Node], index: int, key: str) -> int | None:
    """Return the index of a node's direct child with this key, or of the key on an item line."""
    node = nodes[index]
    if node.dash is not None and node.key == key:
        return index
    for j in range(index + 1, subtree_end(nodes, index)):
        if nodes[j].key == key and nodes[j].col == (node.col if node.dash is not None else -1):
            return j
    for j in children(nodes, index):
        if nodes[j].key == key:
            return j
    return None


def _last_line(nodes: list[Node], start: int, end: int) -> int:
    """Return the last content line of nodes[start:end]."""
    return nodes[max(start, end - 1)].line


# ---- names ----------------------------------------------------------------------------------


def words(name: str) -> list[str]:
    """Split a name into lowercase words on separators and camelCase."""
    out: list[str] = []
    for part in re.split(r"[-_.\s/]+", name):
        if part:
            out.append(part.lower())
            pieces = [w.lower() for w in WORD.findall(part)]
            if len(pieces) > 1:
                out.extend(pieces)
    return out


@functools.lru_cache(maxsize=65536)
def canon(name: str) -> str:
    """Fold a name so 'cartService', 'cart-service', 'cartservice' and 'carts' agree."""
    folded = re.sub(r"[^a-z0-9]", "", name.lower())
    for suffix in ("service", "svc", "api"):
        if folded.endswith(suffix) and len(folded) > len(suffix) + 1:
            folded = folded[: -len(suffix)]
            break
    return folded[:-1] if folded.endswith("s") and len(folded) > 3 else folded


def image_name(image: str) -> str:
    """Return an image reference's last path part without its tag or digest."""
    repository = image.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    return last.split(":", 1)[0].lower()


def image_key(image: str) -> str:
    """Return the image name to match services by, or '' when a variable or template sets it."""
    return "" if not image or "$" in image or "{{" in image else image_name(image)


def is_upstream(image: str) -> bool:
    """Tell whether an image is a data store, broker, collector or proxy the repo only runs."""
    repository = image.split("@", 1)[0].rsplit(":", 1)[0] if "/" in image else image
    if "$" in repository.split(":", 1)[0] or "{{" in repository:
        return False
    tail = "/".join(repository.lower().split(":", 1)[0].split("/")[-2:])
    name = image_name(image)
    # eventuate-mysql8 and bitnami's redis-cluster are still MySQL and Redis.
    named = {name, *(w.rstrip("0123456789") for w in words(name))}
    return bool(named & (UPSTREAM | PROXIES)) or tail in UPSTREAM


def not_service(folder: str) -> str | None:
    """Say why a folder can never be a service (tests, docs, examples, tooling, load client)."""
    parts = folder.split("/")
    for part in parts:
        if part.startswith("."):
            return "hidden folder"
        for word in words(part):
            reason = NOT_SERVICE_WORDS.get(word)
            if reason:
                return reason
    if is_load_client(parts[-1]):
        return "smoke-test or load client"
    if ORCHESTRATOR.search(parts[-1]):
        return "orchestrates the other services"
    folded = re.sub(r"[^a-z0-9]", "", parts[-1].lower())
    if CLIENT_WORDS & {*words(parts[-1]), folded[:11]}:
        return "a client app, not deployed as a service"
    return None


def is_load_client(name: str) -> bool:
    """Tell whether a name is a load generator's or a smoke-test client's."""
    folded = re.sub(r"[^a-z0-9]", "", name.lower())
    return bool(LOAD_FOLDED.search(folded)) or any(w in LOAD_WORDS for w in words(name))


def is_library(folder: str) -> bool:
    """Tell whether a folder's name says it is a shared library."""
    return any(word in LIBRARY_WORDS for word in words(folder.rsplit("/", 1)[-1]))


def _parent(folder: str) -> str:
    """Return a folder's parent ('' for the root)."""
    return folder.rsplit("/", 1)[0] if "/" in folder else ""


def _base(path: str) -> str:
    """Return a path's last part."""
    return path.rsplit("/", 1)[-1]


def _join(folder: str, relative: str) -> str:
    """Resolve a relative path against a folder, folding '.' and '..'; '' is the root."""
    parts = [p for p in folder.split("/") if p] if not relative.startswith("/") else []
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return "/"  # outside the repo
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def lift(folder: str) -> str:
    """Move from a generic build folder (src/, docker/) to the folder that names it."""
    while _base(folder) in LIFT and "/" in folder:
        folder = _parent(folder)
    return folder


# ---- deploy config --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One deployable found in deploy config: a Compose service, artefact or workload."""

    name: str
    block: Block
    source: str  # the evidence sentence
    folder: str | None = None  # the folder it builds, when config says
    image: str = ""
    built: bool = False  # config builds it from this repo
    kind: str = ""
    guessed: bool = False  # the name comes from the file name: a template sets the real one


def compose_items(path: str, text: str) -> list[Item]:
    """Return the Compose services in a Compose file, with their build folders and images."""
    nodes = outline(text)
    top = next(
        (i for i, n in enumerate(nodes) if n.key == "services" and n.col == 0 and n.dash is None),
        None,
    )
    if top is None:
        return []
    here = _parent(path)
    items: list[Item] = []
    for i in children(nodes, top):
        name = nodes[i].key or ""
        end = subtree_end(nodes, i)
        last = _last_line(nodes, i, end)
        block = Block(path, nodes[i].line, last, "Compose service", name, nodes[i].col)
        folder, built = _compose_build(nodes, i, here)
        image_at = child(nodes, i, "image")
        image = nodes[image_at].value if image_at is not None else ""
        shown = f"./{folder}" if folder else "(a folder set by a variable)"
        source = (
            f"{path} service '{name}' builds {shown}"
            if built
            else f"{path} service '{name}' runs {image}"
        )
        items.append(Item(name, block, source, folder, image, built, "Compose service"))
    return items


def _compose_build(nodes: list[Node], index: int, here: str) -> tuple[str | None, bool]:
    """Return (the folder a Compose service builds, whether it builds at all)."""
    at = child(nodes, index, "build")
    if at is None:
        return None, False
    if nodes[at].value:
        return _join(here, nodes[at].value), True
    context_at = child(nodes, at, "context")
    dockerfile_at = child(nodes, at, "dockerfile")
    context = _join(here, nodes[context_at].value if context_at is not None else ".")
    dockerfile = nodes[dockerfile_at].value if dockerfile_at is not None else ""
    if "$" in context:
        return None, True
    if dockerfile and "$" not in dockerfile and "/" in dockerfile:
        return _parent(_join(context, dockerfile)), True
    if dockerfile and "$" in dockerfile and context == here:
        return None, True
    return context, True


def skaffold_items(path: str, text: str) -> list[Item]:
    """Return the artefacts a Skaffold file builds, with their contexts."""
    nodes = outline(text)
    here = _parent(path)
    items: list[Item] = []
    for index, node in enumerate(nodes):
        if node.key != "artifacts":
            continue
        for i in children(nodes, index):
            image_at = child(nodes, i, "image")
            if image_at is None:
                continue
            image = nodes[image_at].value
            context_at = child(nodes, i, "context")
            context = _join(here, nodes[context_at].value if context_at is not None else ".")
            end = subtree_end(nodes, i)
            name = image_name(image)
            last = _last_line(nodes, i, end)
            block = Block(path, nodes[i].line, last, "Skaffold artifact", name, nodes[i].dash or 0)
            source = f"{path} artifact '{name}' builds {context or '.'}"
            items.append(Item(name, block, source, context, image, True, "Skaffold artifact"))
    return items


def manifest_items(path: str, text: str) -> list[Item]:
    """Return every Kubernetes document in a (multi-document) manifest, workloads or not."""
    if "kind:" not in text or "apiVersion" not in text:
        return []
    nodes = outline(text)
    items: list[Item] = []
    start = 0
    for end in [i for i, n in enumerate(nodes) if n.doc] + [len(nodes)]:
        item = _document(path, nodes, start, end)
        if item is not None:
            items.append(item)
        start = end + 1
    return items


def _document(path: str, nodes: list[Node], start: int, end: int) -> Item | None:
    """Describe one Kubernetes document in nodes[start:end], or None when it is not one."""
    top = {n.key: i for i, n in enumerate(nodes[start:end], start) if n.col == 0 and n.dash is None}
    if "kind" not in top or "apiVersion" not in top:
        return None
    kind = nodes[top["kind"]].value
    name = ""
    if "metadata" in top:
        name_at = child(nodes, top["metadata"], "name")
        name = nodes[name_at].value if name_at is not None else ""
    guessed = not name or "{{" in name
    if guessed:
        name = stem_name(path)
    images = [n.value for n in nodes[start:end] if n.key == "image" and n.value]
    labels = [n.value for n in nodes[start:end] if n.key in ("app", "app.kubernetes.io/name")]
    if not name and labels and "{{" not in labels[0]:
        name = labels[0]
    if not name:
        return None
    block = Block(path, nodes[start].line, _last_line(nodes, start, end), kind, name)
    source = f"{path} {kind} '{name}'"
    return Item(name, block, source, None, images[0] if images else "", False, kind, guessed)


def stem_name(path: str) -> str:
    """Name a manifest by its file name without Kubernetes kind words: cart-deployment → cart."""
    stem = _base(path).rsplit(".", 1)[0]
    kept = [w for w in re.split(r"[-_.]+", stem) if w and w.lower() not in KIND_WORDS]
    return "-".join(kept)


@dataclass(frozen=True, slots=True)
class ValuesBlock:
    """One top-level block of a Helm values file."""

    key: str
    block: Block
    keys: frozenset[str]
    name: str
    image: str


def values_blocks(path: str, text: str) -> list[ValuesBlock]:
    """Return the top-level mapping blocks of a Helm values file."""
    nodes = outline(text)
    found: list[ValuesBlock] = []
    for i, node in enumerate(nodes):
        if node.col != 0 or node.dash is not None or not node.key:
            continue
        if node.value and not node.value.startswith("{"):
            continue
        end = subtree_end(nodes, i)
        keys = frozenset(nodes[j].key or "" for j in children(nodes, i))
        name = next(
            (
                nodes[j].value
                for j in children(nodes, i)
                if nodes[j].key in ("name", "fullnameOverride", "nameOverride") and nodes[j].value
            ),
            "",
        )
        image = next(
            (n.value for n in nodes[i:end] if n.key in ("image", "repository") and n.value), ""
        )
        block = Block(path, node.line, _last_line(nodes, i, end), "Helm values", node.key)
        found.append(ValuesBlock(node.key, block, keys, name, image))
    return found


def chart_references(templates: list[str], read: Reader, chart_text: str | None) -> set[str]:
    """Return the values keys a chart's templates and dependencies refer to (folded)."""
    refs: set[str] = set()
    for template in templates:
        refs.add(canon(stem_name(template)))
    for template in templates[:MAX_TEMPLATES]:
        body = read(template) or ""
        refs.update(canon(key) for key in re.findall(r"\.Values\.([A-Za-z_]\w*)", body))
    if chart_text:
        found = re.findall(r"^\s*-?\s*(?:alias|name):\s*(\S+)", chart_text, re.M)
        refs.update(canon(value) for value in found)
    return refs


def final_base(dockerfile: str) -> str:
    """Return the image a Dockerfile's last stage is built FROM, following stage names."""
    stages: dict[str, str] = {}
    last = ""
    for found in re.finditer(
        r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.IGNORECASE | re.M
    ):
        image = found.group(1)
        last = stages.get(image.lower(), image)
        if found.group(2):
            stages[found.group(2).lower()] = last
    return last


# ---- discovery ------------------------------------------------------------------------------


@dataclass
class _Tree:
    """What one pass over the paths found: build files per folder and the deploy files."""

    paths: list[str]
    builds: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    compose: list[str] = field(default_factory=list)
    skaffold: list[str] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    yaml: list[str] = field(default_factory=list)


# The names discovery looks at; a C-level endswith() over the whole list picks them out,
# so a 200,000-path tree costs milliseconds rather than a Python test of every path.
INTERESTING = (*sorted(BUILD_NAMES), *DOTNET, ".dockerfile", ".yaml", ".yml", ".tpl")


def scan(paths: Iterable[str]) -> _Tree:
    """Sort the tree's paths into build files per folder and the deploy files to read."""
    tree = _Tree(paths=[p for p in paths if p])
    for path in [p for p in tree.paths if p.endswith(INTERESTING) or "Dockerfile" in p]:
        slash = path.rfind("/")
        folder, base = (path[:slash], path[slash + 1 :]) if slash >= 0 else ("", path)
        if (
            base in BUILD_NAMES
            or base.startswith("Dockerfile")
            or base.endswith(DOTNET)
            or base[-11:].lower() == ".dockerfile"
        ):
            tree.builds[folder].append(path)
        if "/templates/" in path:
            tree.templates.append(path)
        if base.endswith(YAML):
            _sort_yaml(tree, path, folder, base)
    return tree


def _sort_yaml(tree: _Tree, path: str, folder: str, base: str) -> None:
    """File one YAML path under Compose, Skaffold, charts, values or other YAML."""
    if COMPOSE.match(base):
        tree.compose.append(path)
    elif SKAFFOLD.match(base):
        tree.skaffold.append(path)
    elif base == "Chart.yaml":
        tree.charts.append(folder)
    elif VALUES.match(base):
        tree.values.append(path)
    else:
        tree.yaml.append(path)


@dataclass
class _Draft:
    """Accumulate one service while discovery runs."""

    name: str
    folders: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    images: set[str] = field(default_factory=set)

    def note(self, line: str) -> None:
        """Add one evidence line, once."""
        if line and line not in self.evidence:
            self.evidence.append(line)

    def add(self, item: Item) -> None:
        """Attach a deploy item: its block, the names it goes by and, for a deployable, why."""
        if item.kind in WORKLOADS or item.kind in ("Compose service", "Skaffold artifact", ""):
            self.note(item.source)  # a Service or ConfigMap document is a block, not evidence
        self.blocks.append(item.block)
        if canon(item.name) != canon(self.name) and item.name not in self.aliases:
            self.aliases.append(item.name)
        if image_key(item.image) and not item.guessed:
            self.images.add(image_key(item.image))

    def freeze(self) -> ServiceEntry:
        """Return the finished entry."""
        return ServiceEntry(
            name=self.name,
            folders=tuple(self.folders),
            evidence=tuple(self.evidence),
            blocks=tuple(sorted(set(self.blocks), key=lambda b: (b.path, b.start))),
            files=tuple(sorted(set(self.files))),
            aliases=tuple(self.aliases),
        )


def _has_deploy(paths: list[str]) -> bool:
    """Tell whether a folder's own files deploy it: a Dockerfile, Procfile, app.yaml..."""
    for path in paths:
        base = _base(path)
        if (
            base in DEPLOY_NAMES
            or base.startswith("Dockerfile")
            or base.lower().endswith(".dockerfile")
        ):
            return True
    return False


def _best(paths: list[str]) -> str:
    """Return the build file that best shows a folder builds on its own (Dockerfile first)."""
    return min(
        paths, key=lambda p: (not _base(p).startswith("Dockerfile"), p.count("/"), p), default=""
    )


class _Discovery:
    """Run discovery over one tree; ``run()`` returns the ServiceMap."""

    def __init__(self, paths: Iterable[str], read: Reader) -> None:
        """Scan the paths once and keep the reader."""
        self.tree = scan(paths)
        self.read = read
        self.parsed: set[str] = set()
        self.excluded: dict[str, str] = {}
        self.drafts: dict[str, _Draft] = {}
        self.by_folder: dict[str, str] = {}
        self.by_name: dict[str, _Draft] = {}  # folded name or alias → its service
        self.by_image: dict[str, _Draft] = {}  # image name → its service
        self.prefixes: set[str] = set()

    def text(self, path: str) -> str | None:
        """Read a file through the reader, refusing what is missing, unreadable or too large."""
        try:
            body = self.read(path)
        except (OSError, UnicodeError, ValueError):
            return None  # a caller's reader that fails on one file leaves that file unread
        return body if body is not None and len(body) <= MAX_TEXT else None

    def run(self) -> ServiceMap:
        """Find the services, attach their deploy blocks, and drop a single-service result."""
        built = self._built_items()
        manifests = self._manifests()
        values = self._values()
        deployed = {canon(i.name) for i in built + manifests} | {canon(v.key) for v, _ in values}
        self._folders(built, deployed)
        self._attach(built, manifests, values)
        self._own_files(manifests)
        return self._result()

    # -- deploy files

    def _built_items(self) -> list[Item]:
        """Parse the Compose and Skaffold files outside tests, docs, examples and tooling."""
        items: list[Item] = []
        for paths, parse in (
            (self.tree.compose, compose_items),
            (self.tree.skaffold, skaffold_items),
        ):
            for path in paths:
                stem = _base(path).rsplit(".", 1)[0]
                if not_service(_parent(path) or stem) or (_parent(path) and not_service(stem)):
                    continue
                body = self.text(path)
                if body is not None:
                    self.parsed.add(path)
                    items.extend(parse(path, body))
        return items

    def _manifests(self) -> list[Item]:
        """Parse the YAML files that may be Kubernetes manifests, deploy folders first."""
        usable = [p for p in self.tree.yaml if not (_parent(p) and not_service(_parent(p)))]
        usable.sort(key=lambda p: not _in_deploy_dir(p))
        items: list[Item] = []
        for path in usable[:MAX_MANIFESTS]:
            body = self.text(path)
            found = manifest_items(path, body) if body is not None else []
            if found:
                self.parsed.add(path)
                items.extend(found)
        return items

    def _values(self) -> list[tuple[ValuesBlock, set[str]]]:
        """Parse each chart's values files; pair each block with what the chart refers to."""
        by_chart: dict[str, list[str]] = defaultdict(list)
        for path in self.tree.values:
            by_chart[_parent(path)].append(path)
        found: list[tuple[ValuesBlock, set[str]]] = []
        for chart in self.tree.charts:
            if chart not in by_chart or (chart and not_service(chart)):
                continue
            prefix = f"{chart}/templates/" if chart else "templates/"
            templates = [p for p in self.tree.templates if p.startswith(prefix)]
            chart_text = self.text(f"{chart}/Chart.yaml" if chart else "Chart.yaml")
            refs = chart_references(templates, self.text, chart_text)
            for path in by_chart[chart]:
                body = self.text(path)
                if body is not None:
                    self.parsed.add(path)
                    found.extend((block, refs) for block in values_blocks(path, body))
        return found

    # -- folders

    def _folders(self, built: list[Item], deployed: set[str]) -> None:
        """Accept sibling folders that build and deploy on their own, and folders config builds."""
        candidates: dict[str, list[str]] = defaultdict(list)
        for folder, files in self.tree.builds.items():
            if folder:
                candidates[lift(folder)].extend(files)
        declared: dict[str, Item] = {}
        for item in built:
            if item.folder and item.folder != "/":
                declared.setdefault(lift(item.folder), item)
                candidates.setdefault(lift(item.folder), [])
        groups: dict[str, list[str]] = defaultdict(list)
        for folder in candidates:
            groups[_parent(folder)].append(folder)
        accepted: dict[str, list[str]] = {}
        for parent, members in groups.items():
            for folder in self._group(parent, members, candidates, declared, deployed):
                accepted[folder] = [_best(candidates[folder])]
        for folder, item in declared.items():
            if folder not in accepted and self._deployable(folder, candidates[folder]):
                accepted[folder] = []
            if folder in accepted:
                accepted[folder].append(item.source)
        for folder in sorted(accepted, key=lambda f: (f.count("/"), f)):
            self._claim(folder, accepted[folder])

    def _group(
        self,
        parent: str,
        members: list[str],
        candidates: Mapping[str, list[str]],
        declared: Mapping[str, Item],
        deployed: set[str],
    ) -> list[str]:
        """Return the members of one sibling group that are services."""
        kept = [m for m in sorted(members) if self._deployable(m, candidates[m])]
        if len(kept) < 2:
            return []
        signalled = [
            m
            for m in kept
            if m in declared or canon(_base(m)) in deployed or _has_deploy(candidates[m])
        ]
        if signalled:
            for member in sorted(set(kept) - set(signalled)):
                self.excluded[member] = "nothing deploys it: a library or tool of its siblings"
            return signalled
        if not any(part in SERVICE_PARENTS for part in parent.split("/")):
            for member in kept:
                self.excluded[member] = (
                    "nothing deploys it, and its parent is not a services folder"
                )
            return []
        return [m for m in kept if self._app_not_library(m, candidates[m])]

    def _deployable(self, folder: str, files: list[str]) -> bool:
        """Tell whether a folder may be a service at all, noting why not."""
        if not folder or folder == "/":
            return False
        reason = not_service(folder) or self._upstream_only(folder, files) or self._prepares(folder)
        if reason:
            self.excluded[folder] = reason
        return reason is None

    def _upstream_only(self, folder: str, files: list[str]) -> str | None:
        """Say so when the folder's only build is a Dockerfile that configures an upstream image."""
        others = [f for f in files if not _has_deploy([f])]
        dockerfiles = [
            f for f in files if _base(f).startswith("Dockerfile") or _base(f) == "Containerfile"
        ]
        if not dockerfiles or others:
            return None
        base = final_base(self.text(_best(dockerfiles)) or "")
        if not base or not is_upstream(base):
            return None
        if image_name(base) in PROXIES and self._has_code(folder):
            return None
        return f"only configures the upstream image {base}"

    def _prepares(self, folder: str) -> str | None:
        """Say so when a folder only prepares a sibling that configures an upstream image."""
        for other, why in list(self.excluded.items()):
            sibling = _parent(other) == _parent(folder) and folder.startswith(f"{other}-")
            if sibling and why.startswith("only configures"):
                return f"prepares {_base(other)}, which {why}"
        return None

    def _has_code(self, folder: str) -> bool:
        """Tell whether a folder holds source code, not only config and scripts."""
        prefix = f"{folder}/"
        return any(p.startswith(prefix) and p.endswith(CODE) for p in self.tree.paths)

    def _app_not_library(self, folder: str, files: list[str]) -> bool:
        """Tell a deployable app from a library when nothing in the tree deploys either."""
        projects = [f for f in files if f.endswith(DOTNET)]
        verdict: str | None
        if projects and len(projects) == len(files):
            verdict = self._dotnet(folder, projects[0])
        else:
            verdict = None if is_library(folder) else ""
        if verdict == "":
            return True
        self.excluded[folder] = verdict or "a shared library"
        return False

    def _dotnet(self, folder: str, project: str) -> str | None:
        """Classify a .NET project: '' for an app, None for a library, else why it is neither."""
        body = self.text(project)
        if body is None:
            tail = words(_base(folder))[-1:]
            return "" if tail and tail[0] in APP_WORDS and not is_library(folder) else None
        if "Aspire.AppHost" in body or "<IsAspireHost>true" in body:
            return "orchestrates the other services"
        if "<UseMaui>true" in body:
            return "a client app, not deployed as a service"
        app = re.search(r"Sdk=\"Microsoft\.NET\.Sdk\.(Web|Worker)|<OutputType>(Win)?Exe<", body)
        return "" if app else None

    def _claim(self, folder: str, evidence: list[str]) -> None:
        """Make a folder a service, unless it lies inside one already."""
        if any(folder.startswith(f"{other}/") for other in self.by_folder):
            return
        name = _base(folder)
        if name in self.drafts:
            name = f"{_base(_parent(folder)) or '.'}/{name}"
        draft = self._start(_Draft(name=name, folders=[folder]))
        self.by_folder[folder] = name
        for line in evidence:
            draft.note(line)

    # -- deploy items onto services

    def _attach(
        self, built: list[Item], manifests: list[Item], values: list[tuple[ValuesBlock, set[str]]]
    ) -> None:
        """Attach each deploy item to its service, or make a service of a deployable of its own."""
        order = {kind: i for i, kind in enumerate(WORKLOADS)}
        placed = [(item, item.built and item.folder is None) for item in built] + [
            (item, item.kind in WORKLOADS)
            for item in sorted(manifests, key=lambda i: order.get(i.kind, len(order)))
        ]
        self.prefixes = {
            _repository(item.image)[0]
            for item, _ in placed
            if image_key(item.image) and (owner := self._owner(item)) and owner.folders
        }
        for item, may_start in placed:
            self._place(item, self._owner(item), may_start)
        for block, refs in values:
            item = Item(
                block.key,
                block.block,
                f"{block.block.path} Helm values block '{block.key}'",
                image=block.image,
            )
            owner = self._owner_by_name(block.key, "") or (
                self._owner_by_name(block.name, block.image) if block.name or block.image else None
            )
            shaped = bool(block.keys & HELM_SHAPE) and canon(block.key) in refs
            self._place(item, owner, shaped)

    def _owner(self, item: Item) -> _Draft | None:
        """Return the service a deploy item builds (by folder) or names."""
        if item.folder is not None:
            return self._owner_of_folder(item.folder)
        return self._owner_by_name(item.name, item.image)

    def _place(self, item: Item, owner: _Draft | None, may_start: bool) -> None:
        """Attach an item to its owner; items in a service's own folder never start another."""
        home = self._home(item.block.path)
        if home is not None and owner is not home and item.folder is None:
            return
        if owner is not None:
            self._add(owner, item)
        elif may_start and home is None:
            reason = self._not_own(item.name, item.image)
            if reason is None:
                self._new(item)
            elif item.name not in self.excluded:
                self.excluded[item.name] = f"{reason} ({item.source})"

    def _home(self, path: str) -> _Draft | None:
        """Return the service a deploy file belongs to by where it lies, if any.

        That is the service whose folder holds it, or, inside a deploy folder, the service
        an enclosing folder is named after (``deploy/kubernetes/charts/carts/values.yaml``).
        """
        home = self._owner_of_folder(_parent(path))
        if home is not None or not _in_deploy_dir(path):
            return home
        folder = _parent(path)
        while folder:
            named = self._owner_by_name(_base(folder), "")
            if named is not None:
                return named
            folder = _parent(folder)
        return None

    def _owner_of_folder(self, folder: str | None) -> _Draft | None:
        """Return the service whose folder holds this folder."""
        while folder:
            if folder in self.by_folder:
                return self.drafts[self.by_folder[folder]]
            folder = _parent(folder)
        return None

    def _owner_by_name(self, name: str, image: str) -> _Draft | None:
        """Return the service a deploy name (or image) denotes, comparing folded names."""
        key = image_key(image)
        for wanted in (canon(name), canon(key)):
            if wanted and wanted in self.by_name:
                return self.by_name[wanted]
        return self.by_image.get(key) if key else None

    def _not_own(self, name: str, image: str) -> str | None:
        """Say why a deployable with no folder is not the repo's own service, or None if it is."""
        if not name:
            return "no name"
        reason = not_service(name)
        if reason:
            return reason
        if name.lower() in UPSTREAM | PROXIES:
            return f"runs {name}, a data store, broker, collector or proxy from upstream"
        if image and is_upstream(image):
            return f"runs the upstream image {image}"
        names = {canon(name), canon(image_key(image))} - {""}
        ruled_out = next((f for f in self.excluded if canon(_base(f)) in names), None)
        if ruled_out is not None:
            return f"deploys {ruled_out}, which is not a service"
        # Once the repo's own images are known by their registry, a workload from another
        # registry (eventuateio/eventuate-cdc-service) is a third party's.
        if image_key(image) and self.prefixes and _repository(image)[0] not in self.prefixes:
            return f"runs {image}, from a registry the repo's own services do not use"
        return None

    def _new(self, item: Item) -> None:
        """Start a service from a deploy item alone, or add it to the one it is a part of."""
        for draft in self.drafts.values():
            if item.name.startswith(f"{draft.name}-") or (
                not draft.folders
                and image_key(item.image)
                and image_key(item.image) in draft.images
            ):
                self._add(draft, item)
                return
        self._add(self.drafts.get(item.name) or self._start(_Draft(name=item.name)), item)

    def _start(self, draft: _Draft) -> _Draft:
        """Register a new service under its name."""
        self.drafts.setdefault(draft.name, draft)
        self.by_name.setdefault(canon(draft.name), self.drafts[draft.name])
        return self.drafts[draft.name]

    def _add(self, draft: _Draft, item: Item) -> None:
        """Attach an item to a service and remember the names and image it goes by."""
        draft.add(item)
        for name in (draft.name, *draft.aliases):
            self.by_name.setdefault(canon(name), draft)
        for image in draft.images:
            self.by_image.setdefault(image, draft)

    def _own_files(self, manifests: list[Item]) -> None:
        """Give each service the manifests named after it and those holding only its documents."""
        owners: dict[str, set[str]] = defaultdict(set)
        for item in manifests:
            owner = self._owner_by_name(item.name, item.image)
            owners[item.block.path].add(owner.name if owner else "")
        for path in self.tree.yaml + self.tree.templates:
            if path not in owners and _in_deploy_dir(path) and path.endswith(YAML):
                owners[path] = set()
        for path, names in owners.items():
            if self._owner_of_folder(_parent(path)):
                continue  # its folder already says whose it is
            owner = self._owner_by_name(stem_name(path), "") or self._home(path)
            name = owner.name if owner else ""
            if not name and len(names) == 1:
                name = next(iter(names))
            if name:
                self.drafts[name].files.append(path)

    def _result(self) -> ServiceMap:
        """Freeze the drafts; a repo with fewer than two services has none."""
        entries = tuple(self.drafts[name].freeze() for name in sorted(self.drafts))
        excluded = tuple(
            (folder, why)
            for folder, why in sorted(self.excluded.items())
            if not self._owner_of_folder(folder)
        )
        if len(entries) < 2:
            single = tuple(
                (e.name, "the only service: a single-service repo has none") for e in entries
            )
            return ServiceMap((), frozenset(self.parsed), excluded + single)
        return ServiceMap(entries, frozenset(self.parsed), excluded)


def _repository(image: str) -> tuple[str, str]:
    """Split an image reference into (registry and path, name) without tag or digest."""
    head, _, last = image.split("@", 1)[0].rpartition("/")
    return head.lower(), last.split(":", 1)[0].lower()


def _in_deploy_dir(path: str) -> bool:
    """Tell whether a path lies in a deploy folder (k8s/, helm/, kustomize/, manifests/...)."""
    return any(DEPLOY_DIR.search(part.lower()) for part in path.split("/")[:-1])


def discover(paths: Iterable[str], read: Reader) -> ServiceMap:
    """Infer a repo's services from its head tree's paths and the text of its build files."""
    return _Discovery(paths, read).run()


# ---- the merged view: configured services over discovered ones -----------------------------


def merge(found: ServiceMap | None, policy: Policy) -> ServiceMap:
    """Lay the policy's configured services over discovered ones; configured entries win."""
    configured = [
        ServiceEntry(
            name,
            evidence=("configured in the policy's services map",),
            paths=svc.paths,
            jobs=svc.jobs,
            source="configured",
        )
        for name, svc in policy.services.items()
    ]
    globs = compiled(policy).services
    kept: list[ServiceEntry] = []
    dropped: list[tuple[str, str]] = []
    for entry in found.services if found else ():
        covering = next(
            (
                name
                for name, paths, _ in globs
                if name == entry.name or any(paths.match(f"{f}/-") for f in entry.folders)
            ),
            None,
        )
        if covering is None:
            kept.append(entry)
        else:
            dropped.append((entry.name, f"the configured service '{covering}' covers it"))
    services = tuple(sorted([*configured, *kept], key=lambda e: e.name))
    parsed = found.parsed if found else frozenset()
    return ServiceMap(services, parsed, (*(found.excluded if found else ()), *dropped))


@dataclass(frozen=True)
class _Index:
    """Look paths, lines and job names up against one merged map, compiled once."""

    merged: ServiceMap
    configured: tuple[tuple[str, GlobSet, tuple[str, ...]], ...]
    roots: tuple[str, ...]
    folders: Mapping[str, str]
    files: Mapping[str, str]
    blocks: Mapping[str, tuple[tuple[int, Block, str], ...]]  # path → (start, block, service)
    names: re.Pattern[str] | None
    alias_of: Mapping[str, str]

    def block_at(self, path: str, line: int) -> tuple[str, Block] | None:
        """Return (service, block) of the block holding a head line of a deploy file."""
        rows = self.blocks.get(path, ())
        at = bisect.bisect_right(rows, line, key=lambda row: row[0]) - 1
        if at >= 0 and rows[at][1].end >= line:
            return rows[at][2], rows[at][1]
        return None

    def named(self, text: str) -> dict[str, str]:
        """Return the services named as whole words in a text, each with the word found."""
        if self.names is None:
            return {}
        found: dict[str, str] = {}
        for match in self.names.finditer(text):
            found.setdefault(self.alias_of[match.group(0).lower()], match.group(0))
        return found


def _build_index(found: ServiceMap | None, policy: Policy) -> _Index:
    """Compile the merged map's folders, files, blocks and names for lookups."""
    merged = merge(found, policy)
    folders: dict[str, str] = {}
    files: dict[str, str] = {}
    blocks: dict[str, list[tuple[int, Block, str]]] = defaultdict(list)
    alias_of: dict[str, str] = {}
    for entry in merged.services:
        if entry.source == "configured":
            continue
        folders.update((folder, entry.name) for folder in entry.folders)
        files.update((path, entry.name) for path in entry.files)
        for block in entry.blocks:
            blocks[block.path].append((block.start, block, entry.name))
        for alias in (entry.name, *entry.aliases):
            if len(alias) > 1 and alias.lower() not in CI_WORDS:
                alias_of.setdefault(alias.lower(), entry.name)
    pattern = "|".join(re.escape(a) for a in sorted(alias_of, key=len, reverse=True))
    return _Index(
        merged=merged,
        configured=compiled(policy).services,
        roots=policy.service_roots,
        folders=folders,
        files=files,
        blocks={path: tuple(sorted(rows, key=lambda r: r[0])) for path, rows in blocks.items()},
        names=re.compile(rf"(?<![A-Za-z0-9]){pattern}(?![A-Za-z0-9])", re.I) if pattern else None,
        alias_of=alias_of,
    )


_CACHE: dict[tuple[int, int], tuple[ServiceMap | None, Policy, _Index]] = {}


def index(found: ServiceMap | None, policy: Policy) -> _Index:
    """Return the compiled lookups for this map under this policy, built once per pair."""
    key = (id(found), id(policy))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is found and hit[1] is policy:
        return hit[2]
    built = _build_index(found, policy)
    if len(_CACHE) > 32:
        _CACHE.clear()
    _CACHE[key] = (found, policy, built)
    return built


def path_owners(path: str, lookups: _Index) -> dict[str, str]:
    """Map each service a path belongs to onto why: configured glob, folder, manifest, root."""
    owners = {
        name: f"{path} matches '{glob}'"
        for name, globs, _ in lookups.configured
        if (glob := globs.match(path)) is not None
    }
    if owners:
        return owners
    if path in lookups.files:
        return {lookups.files[path]: f"{path} is its own manifest"}
    folder = _parent(path)
    while folder:
        if folder in lookups.folders:
            return {lookups.folders[folder]: f"{path} is in its folder {folder}/"}
        folder = _parent(folder)
    for root in lookups.roots:
        if path.startswith(root) and "/" in path[len(root) :]:
            name = path[len(root) :].split("/", 1)[0]
            return {name: f"{path} is under the service root {root}"}
    return {}


def services_of_path(path: str, policy: Policy, found: ServiceMap | None = None) -> set[str]:
    """Return the services a path belongs to: the configured map, discovered folders, roots."""
    return set(path_owners(path, index(found, policy)))


def job_owners(job: str, lookups: _Index) -> dict[str, str]:
    """Map each service a CI job belongs to onto why: a configured job glob or its name."""
    owners = {
        name: f"job '{job}' matches '{pattern}'"
        for name, _, jobs in lookups.configured
        for pattern in jobs
        if fnmatch.fnmatchcase(job, pattern)
    }
    for name, word in lookups.named(job).items():
        owners.setdefault(name, f"job '{job}' names it ('{word}')")
    return owners


def services_of_job(job: str, policy: Policy, found: ServiceMap | None = None) -> set[str]:
    """Return the services a CI job belongs to: configured job globs, then service names in it."""
    return set(job_owners(job, index(found, policy)))


# ---- which services a diff touches ----------------------------------------------------------


def head_lines(change: FileChange) -> tuple[list[int], list[tuple[int, str]]]:
    """Place a change on the head file: its added lines, and each removed line's text with
    the head line just before where it was (0 at the top of the file)."""
    added = sorted(number for number, _ in change.added)
    removed: list[tuple[int, str]] = []
    taken = 0
    for gone, (number, text) in enumerate(sorted(change.removed)):
        kept = number - 1 - gone  # the old lines before this one that survive into the head
        # The kept-th surviving line sits at head line kept + (added lines up to there).
        while taken < len(added) and added[taken] <= kept + taken:
            taken += 1
        removed.append((kept + taken if kept else 0, text))
    return added, removed


def looks_deploy(path: str) -> bool:
    """Tell whether a path is shared deploy config: Compose, Skaffold, values or a manifest."""
    base = _base(path)
    return bool(COMPOSE.match(base) or SKAFFOLD.match(base) or VALUES.match(base)) or (
        base.endswith(YAML) and _in_deploy_dir(path)
    )


KEY_LINE = re.compile(
    r"^\s*-?\s*(?:(?:name|image|context|app|repository|container_name|hostname"
    r"|fullnameOverride|nameOverride)\s*:\s*(?P<value>\S+)|(?P<key>[\w.-]+)\s*:\s*(\{\s*\})?\s*$)"
)


def block_hits(change: FileChange, lookups: _Index) -> dict[str, str]:
    """Map each service whose own block in a shared deploy file the change touches onto where."""
    path = change.path
    if path in lookups.files:
        return {}
    if path in lookups.blocks:
        added, removed = head_lines(change)
        found = [(line, lookups.block_at(path, line)) for line in added]
        found += [_removed_block(path, line, text, lookups) for line, text in removed]
        hits: dict[str, str] = {}
        for line, hit in sorted(found, key=lambda row: row[0]):
            if hit is not None:
                hits.setdefault(hit[0], hit[1].at(line))
        return hits
    if path in lookups.merged.parsed or not looks_deploy(path):
        return {}
    return _hunk_hits(change, lookups)


def _removed_block(
    path: str, before: int, text: str, lookups: _Index
) -> tuple[int, tuple[str, Block] | None]:
    """Return (head line, block) for a removed line that sat between lines before and before+1.

    A line indented deeper than the next block's own key continued the block above it
    (when the next line starts a new block); a line at the key's column or left of it
    belonged to whatever follows.
    """
    above = lookups.block_at(path, before) if before else None
    below = lookups.block_at(path, before + 1)
    indent = len(text) - len(text.lstrip(" "))
    starts_next = below is None or below[1].start > before
    key_column = below[1].indent if below is not None else 0
    if above is not None and starts_next and indent > key_column:
        return before, above
    return before + 1, below


def _hunk_hits(change: FileChange, lookups: _Index) -> dict[str, str]:
    """Find the blocks of a deploy file that cannot be read from the changed lines alone.

    Without the head text there are no line ranges, so a changed line that keys a block
    (``cart:``) or names a service (``image: …/cart``, ``context: ./src/cart``) counts;
    failing that, any changed line that names a service as a whole word does.
    """
    lines = [*change.added, *change.removed]
    strong: dict[str, str] = {}
    weak: dict[str, str] = {}
    for number, text in lines:
        keyed = KEY_LINE.match(text)
        target = (keyed.group("value") or keyed.group("key") or "") if keyed else ""
        for name, word in lookups.named(text).items():
            where = f"{change.path}:{number} names '{word}'"
            (strong if word.lower() in target.lower() else weak).setdefault(name, where)
    return strong or weak


def _resolve(evidence: Evidence, policy: Policy) -> _Index:
    """Return the lookups for this evidence: its checkout's map, or one inferred from the diff."""
    found = evidence.services if evidence.services is not None else infer(evidence, policy)
    return index(found, policy)


def touched(evidence: Evidence, policy: Policy) -> dict[str, str]:
    """Map each service the diff touches onto its evidence: a path, or a deploy block's line."""
    lookups = _resolve(evidence, policy)
    hits: dict[str, str] = {}
    for change in evidence.files:
        for path in dict.fromkeys(p for p in (change.path, change.old_path) if p):
            for name in path_owners(path, lookups):
                hits.setdefault(name, path)
        for name, where in block_hits(change, lookups).items():
            hits.setdefault(name, where)
    return dict(sorted(hits.items()))


# ---- the multi-service trigger --------------------------------------------------------------


def split_line(path: str) -> tuple[str, int | None]:
    """Split 'path:12' or 'path:12:5' into the path and its line."""
    found = LINE_REF.match(path)
    if found is None:
        return path, None
    return found.group("path"), int(found.group("line"))


def failing_services(evidence: Evidence, policy: Policy) -> dict[str, str]:
    """Map each failing service onto the failed job or path that shows it, and why."""
    failing: dict[str, str] = {}
    if evidence.ci is None:
        return failing
    lookups = _resolve(evidence, policy)
    for job in evidence.ci.failed_jobs:
        for name, why in job_owners(job, lookups).items():
            failing.setdefault(name, why)
    for raw in evidence.ci.failed_paths:
        for name, why in _path_failures(raw, evidence, lookups).items():
            failing.setdefault(name, why)
    return failing


def _path_failures(raw: str, evidence: Evidence, lookups: _Index) -> dict[str, str]:
    """Map the services one failed path points at onto why."""
    path, line = split_line(raw)
    owners = path_owners(path, lookups)
    if owners:
        return owners
    if line is not None and (found := lookups.block_at(path, line)) is not None:
        return {found[0]: found[1].at(line)}
    if path not in lookups.blocks and not looks_deploy(path):
        return {}
    # A shared deploy file failed with no line to go on: blame the blocks the diff changes.
    changes = [c for c in evidence.files if path in (c.path, c.old_path)]
    hits: dict[str, str] = {}
    for change in changes:
        for name, where in block_hits(change, lookups).items():
            hits.setdefault(name, f"{path} failed, and the diff changes {where}")
    return hits


def multi_service_failure(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield a reason per failing service when CI failures span two or more services."""
    failing = failing_services(evidence, policy)
    if len(failing) >= 2:
        for service, why in sorted(failing.items()):
            yield Reason("multi_service_failure", f"service '{service}' fails: {why}")


# ---- without a checkout: services from the diff's own paths ---------------------------------


def _unread(path: str) -> str | None:
    """Read nothing: the diff's paths are all there is."""
    return None


def infer(evidence: Evidence, policy: Policy) -> ServiceMap:
    """Infer a service map from the diff's and the failure's paths when there is no checkout.

    Discovery runs on the paths alone. Then sibling folders count when the diff shows them
    building or deploying on their own (a build file, a chart, a Compose file or a name
    with the word "service"): two such siblings anywhere, or, under ``src/``, two changed
    siblings of which one shows it (``src/components/`` and the like never count). The
    folders under the policy's service roots count as they always have.
    """
    changed = [p for change in evidence.files for p in (change.path, change.old_path) if p]
    failed = [split_line(p)[0] for p in (evidence.ci.failed_paths if evidence.ci else ())]
    seen = discover([*changed, *failed], _unread)
    entries = {entry.name: entry for entry in seen.services}
    claimed = {folder for entry in seen.services for folder in entry.folders}
    for folder, why in _shown_siblings(changed, failed):
        name = _base(folder)
        if folder not in claimed and name not in entries:
            entries[name] = ServiceEntry(name, (folder,), (why,), source="inferred")
            claimed.add(folder)
    # Folders under the service roots are mapped by the roots themselves; their names are
    # kept so that a failed job naming one counts too.
    for folder, why in _rooted(changed + failed, policy):
        entries.setdefault(
            _base(folder), ServiceEntry(_base(folder), (), (why,), source="inferred")
        )
    for name, files in _manifest_names(changed).items():
        known = next((e for e in entries.values() if canon(e.name) == canon(name)), None)
        why = f"{files[0]} is a manifest named after it"
        entry = known or ServiceEntry(name, evidence=(why,), source="inferred")
        entries[entry.name] = replace(entry, files=(*entry.files, *files))
    return ServiceMap(tuple(entries[name] for name in sorted(entries)), excluded=seen.excluded)


def _datastore(name: str) -> bool:
    """Tell whether a workload's name says it runs a data store, broker or proxy (ftgo-kafka)."""
    named = {w.rstrip("0123456789") for w in words(name)}
    return bool(named & (UPSTREAM | PROXIES | DATASTORE_WORDS))


def _manifest_names(changed: list[str]) -> dict[str, tuple[str, ...]]:
    """Return the workloads that two or more changed per-workload manifests are named after."""
    named: dict[str, list[str]] = defaultdict(list)
    for path in changed:
        if not (path.endswith(YAML) and _in_deploy_dir(path)) or VALUES.match(_base(path)):
            continue
        name = stem_name(path)
        if name and not _datastore(name) and not not_service(name):
            named[name].append(path)
    return {name: tuple(paths) for name, paths in named.items()} if len(named) >= 2 else {}


def _sibling(path: str) -> tuple[str, str] | None:
    """Return (parent, folder) of the top or src/ folder a path lies in, if it may be a service."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "src":
        parent, name = "src", parts[1]
    elif len(parts) >= 2 and parts[0] != "src":
        parent, name = "", parts[0]
    else:
        return None
    folder = f"{parent}/{name}" if parent else name
    if name.lower() in GENERIC_SRC or DEPLOY_DIR.search(name.lower()):
        return None
    if not_service(folder) or is_library(folder):
        return None
    return parent, folder


def _shows(path: str, folder: str) -> bool:
    """Tell whether a path shows its folder building or deploying on its own."""
    rest = path[len(folder) + 1 :]
    first = rest.split("/", 1)[0]
    if "/" not in rest or lift(f"{folder}/{_parent(rest)}") == folder:
        base = _base(rest)
        if base in BUILD_NAMES or base.startswith("Dockerfile") or base.endswith(DOTNET):
            return True
    deploy = looks_deploy(path) or _base(path) == "Chart.yaml"
    return deploy and ("/" not in rest or bool(DEPLOY_DIR.search(first.lower())))


def _shown_siblings(changed: list[str], failed: list[str]) -> list[tuple[str, str]]:
    """Return the sibling folders the diff shows to be services, each with why."""
    groups: dict[str, dict[str, bool]] = defaultdict(dict)  # parent → folder → shows itself
    for path in changed:
        found = _sibling(path)
        if found is not None:
            parent, folder = found
            named = any(w in ("service", "svc", "microservice") for w in words(_base(folder)))
            shows = groups[parent].get(folder, False) or named or _shows(path, folder)
            groups[parent][folder] = shows
    out: list[tuple[str, str]] = []
    for parent, folders in groups.items():
        shown = sorted(f for f, shows in folders.items() if shows)
        if parent == "src" and len(folders) >= 2 and shown:
            extra = {f for p in failed if (s := _sibling(p)) and s[0] == "src" for f in [s[1]]}
            why = "a folder under src/ beside others the diff changes, one with its own build"
            out.extend((folder, why) for folder in sorted(set(folders) | extra))
        elif len(shown) >= 2:
            why = "one of the sibling folders the diff shows building on their own"
            out.extend((folder, why) for folder in shown)
    return out


def _rooted(paths: list[str], policy: Policy) -> list[tuple[str, str]]:
    """Return the folders under the policy's service roots that these paths name."""
    out: dict[str, str] = {}
    for path in paths:
        for root in policy.service_roots:
            rest = path[len(root) :] if path.startswith(root) else ""
            if "/" in rest:
                out.setdefault(
                    root + rest.split("/", 1)[0], f"a folder under the service root {root}"
                )
    return sorted(out.items())
