"""Find dependency bumps in a diff, in every ecosystem, and tell which are breaking or sensitive.

A file is read by its name first (``format_of``): manifests give a pin or a range, lock
files the resolved version, and go.mod the exact minimum Go selects. Each side of the diff
(removed lines, added lines, and the hunks' unchanged lines when ``FileChange`` carries
them as ``context``) is read into name → versions; a name whose versions differ between
the sides is a bump. Where a lock and its manifest bump the same package, the lock's
resolved versions win. Dates, hashes, digests and timestamps are never versions.
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import semver
import yaml
from packaging.version import InvalidVersion, Version

from policies.evidence import FileChange
from policies.model import CATEGORIES, Dependencies, Policy

Line = tuple[int, str]


class Pin(NamedTuple):
    """Name one package and the version or range a line gives it."""

    ecosystem: str
    name: str  # as written; normalised later
    spec: str  # a version or a range, as written
    line: int
    revision: str = ""  # the commit a SHA-pinned Action or hook points at


Parser = Callable[[Sequence[Line]], Iterator[Pin]]

# ---- versions -----------------------------------------------------------------------------------

# A version inside a pin or range: a run of numbers plus any pre-release or variant tail.
VERSION = re.compile(r"(?<![\w.+-])v?(\d+(?:\.\d+)*(?:[-+_~.]?[0-9A-Za-z][0-9A-Za-z.+_~-]*)?)")
# Dates, timestamps and hex digests look like numbers but never name a release.
NOT_A_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}|[0-9a-f]{7,}$|.*\dT\d{2}:\d{2}")
SEMVERISH = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?((?:\.\d+)*)(.*)", re.DOTALL)
HEX_REF = re.compile(r"[0-9a-f]{7,64}")
# Ecosystems whose versions are tags, kept as written (``v4``, ``3.12-slim``).
TAGGED = frozenset({"actions", "pre-commit", "docker"})


def version_tuple(version: str) -> tuple[int, ...]:
    """Read the leading numeric components of a version string."""
    parts = re.findall(r"\d+", version.split("-")[0].split("+")[0])
    return tuple(int(p) for p in parts[:3])


def is_version(text: str) -> bool:
    """Tell whether ``text`` can be a release version (not a date, timestamp or hash)."""
    core = text[1:] if text[:1] in "vV" else text
    return bool(core[:1].isdigit()) and not NOT_A_VERSION.match(core)


def pin_version(spec: str, *, keep_v: bool = False) -> str | None:
    """Return the version a pin or range names: its first lower bound, else its first number.

    ``^1.2.0`` gives 1.2.0, ``~> 5.0`` 5.0, ``>=2,<3`` 2 and ``<3`` 3; None when the spec
    holds no version (``latest``, ``*``, a SHA or a date).
    """
    first: str | None = None
    for match in VERSION.finditer(spec):
        found = match.group(0) if keep_v else match.group(1)
        if spec[: match.start()].rstrip().endswith(("<", "<=", "!=")):
            first = first or found
            continue
        return found if is_version(found) else None
    return first if first is not None and is_version(first) else None


@dataclass(frozen=True, slots=True)
class Parsed:
    """Hold a version's release numbers, and what orders versions with equal numbers."""

    core: tuple[int, ...]
    text: str
    ecosystem: str

    def key(self) -> Any:
        """Return the full ordering key: packaging's Version for pip, semver's elsewhere."""
        if self.ecosystem == "pip":
            return Version(self.text)
        match = SEMVERISH.fullmatch(self.text)
        assert match is not None  # parse_version matched it
        # A Docker tag's tail is a variant (-slim, -alpine3.19), not a pre-release.
        tail = "" if self.ecosystem == "docker" else match.group(5)
        pre, _, build = tail.partition("+")
        major, minor, patch = self.core[:3]
        try:
            return semver.Version(major, minor, patch, _identifiers(pre), _identifiers(build))
        except ValueError:
            return semver.Version(major, minor, patch)


@functools.lru_cache(maxsize=4096)
def parse_version(text: str, ecosystem: str = "") -> Parsed | None:
    """Parse a version by its ecosystem's rules (PEP 440 for pip, lenient semver elsewhere).

    Lenient semver reads ``v1.2``, ``1.2``, ``3.12-slim``, ``5.3.0.RELEASE`` and Go's
    ``v0.0.0-20240213143201-ec583247a57a`` pseudo-versions; a pin such as ``==4.2.11``
    or ``^1.2`` is read for the version it names.
    """
    text = text.strip()
    if not is_version(text):  # a pin or range (==4.2.11, ^1.2): read the version it names
        found = pin_version(text)
        if found is None:
            return None
        text = found
    if ecosystem == "pip":
        try:
            return Parsed(_core(Version(text).release), text, ecosystem)
        except InvalidVersion:
            return None
    match = SEMVERISH.fullmatch(text)
    if match is None:
        return None
    numbers = [int(part or 0) for part in match.groups()[:3]]
    numbers += [int(part) for part in match.group(4).split(".")[1:]]
    return Parsed(_core(tuple(numbers)), text, ecosystem)


def _core(release: tuple[int, ...]) -> tuple[int, ...]:
    """Pad release numbers to three and drop trailing zeros past the third."""
    padded = list(release) + [0] * (3 - len(release))
    while len(padded) > 3 and padded[-1] == 0:
        padded.pop()
    return tuple(padded)


NOT_IDENTIFIER = re.compile(r"[^0-9A-Za-z-]")


def _identifiers(text: str) -> str | None:
    """Turn a version tail (``rc1``, ``-beta.2``, ``.RELEASE``) into semver identifiers."""
    parts = [NOT_IDENTIFIER.sub("-", part) for part in text.lstrip("-._~").split(".")]
    joined = ".".join((p.lstrip("0") or "0") if p.isdigit() else p for p in parts if p)
    return joined or None


@functools.lru_cache(maxsize=8192)
def classify(old: str, new: str, ecosystem: str = "") -> str:
    """Classify old → new as major, minor, patch, downgrade or other.

    Under semver's 0.x rule (npm and Cargo caret semantics) a 0.y → 0.z bump is major. The
    routing specification stops there: for 0.y versions only a change of y breaks, so
    0.0.3 → 0.0.4 is a patch. Equal release numbers (a pre-release to its release, a new
    build, a new commit of a Go pseudo-version) and unparsable versions are "other".
    """
    a, b = parse_version(old, ecosystem), parse_version(new, ecosystem)
    if a is None or b is None:
        return "other"
    x, y = a.core, b.core
    if x == y:
        before, after = a.key(), b.key()
        if after < before:
            return "downgrade"
        return "other"
    if y < x:
        return "downgrade"
    if x[0] != y[0] or (x[0] == 0 and x[1] != y[1]):
        return "major"
    return "minor" if x[1] != y[1] else "patch"


# ---- names --------------------------------------------------------------------------------------

NAME_MAJOR = re.compile(r"/v(\d+)$")
GOPKG_MAJOR = re.compile(r"^(gopkg\.in/.+)\.v\d+$")
PEP503 = re.compile(r"[-_.]+")
DOCKER_HUB = re.compile(r"^(?:(?:index\.)?docker\.io/)?(?:library/)?")


def normalise(name: str, ecosystem: str) -> str:
    """Spell a package name the one way its ecosystem treats as the same package."""
    if ecosystem == "pip":
        return PEP503.sub("-", name).lower()
    if ecosystem == "go":
        return GOPKG_MAJOR.sub(r"\1", NAME_MAJOR.sub("", name))
    if ecosystem == "cargo":
        return name.lower().replace("_", "-")
    if ecosystem == "docker":
        return DOCKER_HUB.sub("", name.lower())
    if ecosystem == "terraform":
        return name.lower().removeprefix("registry.terraform.io/")
    if ecosystem == "pre-commit":  # a GitHub hook repo is owner/repo, like an Action
        return re.sub(r"^(?:\w+://)?(?:www\.)?(?:github\.com/)?|\.git$|/$", "", name.lower())
    if ecosystem in ("rubygems", "actions"):
        return name.lower()
    return name  # npm (scope kept) and maven (group:artifact) are case-sensitive


# ---- the bump -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bump:
    """Describe one dependency whose version changed: where, from what, to what."""

    path: str
    name: str
    old: str
    new: str
    line: int  # the new version's line in the new file
    # pip, npm, go, cargo, maven, rubygems, actions, docker, terraform or pre-commit
    ecosystem: str = ""

    def __post_init__(self) -> None:
        """Take the ecosystem from the file's name when the caller gives none."""
        if not self.ecosystem:
            object.__setattr__(self, "ecosystem", ecosystem_of(self.path))

    @property
    def kind(self) -> str:
        """Classify the bump: major, minor, patch, downgrade or other."""
        return classify(self.old, self.new, self.ecosystem)

    @property
    def breaking(self) -> bool:
        """Tell whether semver says the bump may break callers."""
        return self.kind == "major"


# ---- reading the lines of one file --------------------------------------------------------------

COMMENT_STARTS = ("#", "//", "<!--")
# Keys that version the project or its toolchain, not a dependency: a release bump of
# `version = "2.0.0"` or `edition = "2021"` is no upgrade of anything the code uses.
NOT_DEPENDENCIES = frozenset(
    {
        "version",
        "edition",
        "rust-version",
        "requires-python",
        "python",
        "python_version",
        "python-version",
        "python_full_version",
        "target-version",
        "minversion",
        "node",
        "npm",
        "packageManager",
        "java",
        "jdk",
        "maven",
        "gradle",
    }
)


def _runs(lines: Sequence[Line]) -> Iterator[list[Line]]:
    """Split one side's lines into runs of consecutive line numbers, comment lines dropped.

    A parser's block state (the [[package]] or <dependency> it is in) never crosses a gap.
    """
    run: list[Line] = []
    last = -1
    for number, text in lines:
        if number != last + 1 and run:
            yield run
            run = []
        last = number
        if not text.lstrip().startswith(COMMENT_STARTS):
            run.append((number, text))
    if run:
        yield run


# -- pip, and the TOML manifests of pip and Cargo

REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*((?:===|==|~=|>=|<=|!=|<|>)[^;#\\]*)"
)
TOML_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
TOML_ASSIGN = re.compile(
    r"""^\s*["']?([A-Za-z0-9][A-Za-z0-9._-]*)["']?\s*=\s*(?:\{[^}]*?\bversion\s*=\s*)?["']([^"']*)["']"""
)
PEP508_QUOTED = re.compile(
    r"""["']([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*((?:===|==|~=|>=|<=|!=|<|>|\^|~)[^"';]*)"""
)
DEPENDENCY_TABLE = re.compile(
    r"(?:^|\.)(?:dependencies|dev-dependencies|build-dependencies|packages|dev-packages)$"
)
ONE_DEPENDENCY_TABLE = re.compile(
    r"(?:^|\.)(?:dependencies|dev-dependencies|build-dependencies)\.([^.]+)$"
)
LOCK_KEY = re.compile(r'^(name|version)\s*=\s*"([^"]*)"')
PYTHON_FILE = re.compile(
    r'[/"]([A-Za-z0-9][A-Za-z0-9._]*?)-(\d[A-Za-z0-9.!+_]*?)(?:-\d[^-/"]*)?-[^-/"]+-[^-/"]+-[^-/"]+\.whl\b'
    r'|[/"]([A-Za-z0-9][A-Za-z0-9._-]*?)-(\d[A-Za-z0-9.!+_]*?)\.(?:tar\.gz|tar\.bz2|zip)\b'
)


def _line_pins(run: Sequence[Line], ecosystem: str, pattern: re.Pattern[str]) -> Iterator[Pin]:
    """Yield a pin for each line ``pattern`` matches: group 1 the name, group 2 the version."""
    for number, text in run:
        match = pattern.match(text)
        if match:
            yield Pin(ecosystem, match.group(1), match.group(2), number)


def _requirements(run: Sequence[Line]) -> Iterator[Pin]:
    """Read requirements*.txt/.in and pip-tools or rye locks: ``name[extras] op version``."""
    return _line_pins(run, "pip", REQUIREMENT)


def _dependency_key(section: str | None, key: str) -> str | None:
    """Return the package a TOML ``key = "..."`` pins in this table, or None."""
    if section is None:  # the table header is outside the hunk
        return None if key in NOT_DEPENDENCIES else key
    one = ONE_DEPENDENCY_TABLE.search(section)
    if one:  # [dependencies.serde] version = "1.0"
        return one.group(1) if key == "version" else None
    if DEPENDENCY_TABLE.search(section) and key not in NOT_DEPENDENCIES:
        return key
    return None


def toml_manifest(ecosystem: str, *, pep508: bool) -> Parser:
    """Read a TOML manifest: PEP 508 strings (pyproject) and ``name = "range"`` in dependency tables."""

    def parse(run: Sequence[Line]) -> Iterator[Pin]:
        section: str | None = None
        for number, text in run:
            header = TOML_HEADER.match(text)
            if header:
                section = header.group(1).strip()
                continue
            quoted = list(PEP508_QUOTED.finditer(text)) if pep508 else []
            for match in quoted:
                yield Pin(ecosystem, match.group(1), match.group(2), number)
            assign = None if quoted else TOML_ASSIGN.match(text)
            name = _dependency_key(section, assign.group(1)) if assign else None
            if assign and name:
                yield Pin(ecosystem, name, assign.group(2), number)

    return parse


def toml_lock(ecosystem: str, *, file_names: bool) -> Parser:
    """Read ``[[package]]`` blocks (uv, poetry, pdm, Cargo.lock): their ``name`` and ``version``.

    With ``file_names``, a wheel or sdist file name (``PyJWT-2.9.0-py3-none-any.whl``) also
    names a version, so a hunk whose ``name =`` line is out of sight still yields its bump.
    """

    def parse(run: Sequence[Line]) -> Iterator[Pin]:
        in_package: bool | None = None  # None: the block header is outside the hunk
        name: str | None = None
        version: Line | None = None
        for number, text in run:
            if text.startswith("["):
                if in_package is not False and name and version:
                    yield Pin(ecosystem, name, version[1], version[0])
                in_package, name, version = text.startswith("[[package]]"), None, None
                continue
            key = LOCK_KEY.match(text) if in_package is not False else None
            if key and key.group(1) == "name":
                name = key.group(2)
            elif key:
                version = (number, key.group(2))
            elif file_names and (".whl" in text or ".tar." in text or ".zip" in text):
                for match in PYTHON_FILE.finditer(text):
                    found = match.group(1) or match.group(3), match.group(2) or match.group(4)
                    yield Pin(ecosystem, found[0], found[1], number)
        if in_package is not False and name and version:
            yield Pin(ecosystem, name, version[1], version[0])

    return parse


# -- JSON: package.json, package-lock.json and npm-shrinkwrap.json, Pipfile.lock

# "key": {   opens an object;   "key": "value"   is a string member.
JSON_MEMBER = re.compile(r'^\s*"([^"]*)"\s*:\s*(?:(\{)\s*$|"([^"]*)")')
NPM_SPEC = re.compile(r"^[\^~=<>v\s]*\d")
# .../<name>/-/<name without scope>-<version>.tgz
NPM_TARBALL = re.compile(
    r'/(?P<name>(?:@[^/"\s]+/)?(?P<base>[^/@"\s]+))/-/(?P=base)-(?P<version>\d[^/"\s]*?)\.tgz'
)
NPM_SECTIONS = frozenset(
    {
        "dependencies",
        "devDependencies",
        "peerDependencies",
        "optionalDependencies",
        "overrides",
        "resolutions",
    }
)
UNKNOWN = None  # a JSON object whose key is outside the hunk


def _json_objects(run: Sequence[Line]) -> Iterator[tuple[list[str | None], int, str, str]]:
    """Yield (keys of the open objects, line, key, value) for each ``"key": "value"`` line."""
    stack: list[str | None] = [UNKNOWN]
    for number, text in run:
        stripped = text.lstrip()
        if stripped.startswith("}"):
            if len(stack) > 1:
                stack.pop()
        elif stripped.startswith("{"):
            stack.append("")
        elif stripped.startswith('"'):
            member = JSON_MEMBER.match(text)
            if member and member.group(2):
                stack.append(member.group(1))
            elif member and member.group(1):
                yield stack, number, member.group(1), member.group(3)


def _package_json(run: Sequence[Line]) -> Iterator[Pin]:
    """Read package.json's dependency sections: ``"name": "^1.2.3"``."""
    for stack, number, key, value in _json_objects(run):
        where = stack[-1]
        known = where in NPM_SECTIONS or (where is UNKNOWN and key not in NOT_DEPENDENCIES)
        if known and NPM_SPEC.match(value):
            yield Pin("npm", key, value, number)


def _npm_lock(run: Sequence[Line]) -> Iterator[Pin]:
    """Read package-lock.json v1 (nested ``dependencies``) and v2/v3 (``node_modules/<name>``)."""
    for stack, number, key, value in _json_objects(run):
        if key == "resolved":
            tarball = NPM_TARBALL.search(value)
            if tarball:
                yield Pin("npm", tarball["name"], tarball["version"], number)
        if key != "version" or not stack[-1]:
            continue
        entry = stack[-1] or ""
        if "node_modules/" in entry:
            yield Pin("npm", entry.rsplit("node_modules/", 1)[1], value, number)
        elif len(stack) > 2 and stack[-2] == "dependencies":
            yield Pin("npm", entry, value, number)


def _pipfile_lock(run: Sequence[Line]) -> Iterator[Pin]:
    """Read Pipfile.lock: ``"version": "==2.8.0"`` inside the package's object."""
    for stack, number, key, value in _json_objects(run):
        entry = stack[-1]
        if key == "version" and entry and entry not in ("_meta", "default", "develop"):
            yield Pin("pip", entry, value, number)


# -- pnpm and yarn

PNPM_KEY = re.compile(r"""^\s+['"]?/?((?:@[^/@\s'"]+/)?[^/@\s'"(]+)[@/](\d[^\s:'"(_]*)\S*:\s*$""")
YARN_HEADER = re.compile(r'^"?((?:@[^@"\s/]+/)?[^@"\s,]+)@')
YARN_VERSION = re.compile(r'^\s+version:?\s+"?([^"\s]+)"?\s*$')
YARN_RESOLUTION = re.compile(
    r'^\s+resolution:\s*"(?P<name>(?:@[^@"/]+/)?[^@"]+)@npm:(?P<version>\d[^"]*)"'
)


def _pnpm_lock(run: Sequence[Line]) -> Iterator[Pin]:
    """Read pnpm-lock.yaml's package keys: ``/name@1.2.3:`` (v6), ``name@1.2.3:`` (v9), ``/name/1.2.3:`` (v5)."""
    return _line_pins(run, "npm", PNPM_KEY)


def _yarn_lock(run: Sequence[Line]) -> Iterator[Pin]:
    """Read yarn.lock v1 and berry: a header naming the package, then its ``version``."""
    name: str | None = None
    for number, text in run:
        if text[:1] not in (" ", "\t", ""):
            header = YARN_HEADER.match(text)
            name = header.group(1) if header and "@workspace:" not in text else None
            continue
        version = YARN_VERSION.match(text)
        if version and name:
            yield Pin("npm", name, version.group(1), number)
            continue
        resolution = YARN_RESOLUTION.match(text)
        tarball = NPM_TARBALL.search(text) if resolution is None and "resolved" in text else None
        found = resolution or tarball
        if found:
            yield Pin("npm", found["name"], found["version"], number)


# -- Go

GO_MOD = re.compile(r"^\s*(?:require\s+)?([a-z0-9.-]+\.[a-z]{2,}/[^\s]+)\s+v([0-9][^\s]*)")
GO_BLOCK = re.compile(r"^\s*(require|replace|exclude|retract|tool|godebug)\s*\(")
GO_SUM = re.compile(r"^(\S+) v(\S+?)(/go\.mod)? h1:")


def _go_mod(run: Sequence[Line]) -> Iterator[Pin]:
    """Read go.mod's require lines and blocks (replace, exclude and retract are skipped)."""
    block: str | None = None  # None: the enclosing block is outside the hunk
    for number, text in run:
        opened = GO_BLOCK.match(text)
        if opened:
            block = opened.group(1)
            continue
        if text.strip() == ")":
            block = ""
            continue
        match = GO_MOD.match(text) if block in (None, "", "require") and "=>" not in text else None
        if match:
            yield Pin("go", match.group(1), match.group(2), number)


def _go_sum(run: Sequence[Line]) -> Iterator[Pin]:
    """Read go.sum's module lines; ``/go.mod`` lines stay behind for old versions, so skip them."""
    for number, text in run:
        match = GO_SUM.match(text)
        if match and not match.group(3):
            yield Pin("go", match.group(1), match.group(2), number)


# -- RubyGems

GEM = re.compile(r"""^\s*gem\s*\(?\s*["']([^"']+)["']\s*,\s*((?:["'][^"']*["']\s*,?\s*)+)""")
GEMSPEC = re.compile(
    r"""\.add_(?:runtime_|development_)?dependency\s*\(?\s*["']([^"']+)["']\s*,\s*((?:["'][^"']*["']\s*,?\s*)+)"""
)
# Exactly four spaces: a resolved spec (six is a dependency's constraint, two a top-level one).
GEM_LOCK = re.compile(r"^    ([A-Za-z0-9][\w.-]*) \(([^)\s]+)\)\s*$")


def _gemfile(run: Sequence[Line]) -> Iterator[Pin]:
    """Read Gemfile and gemspec requirements: ``gem "jwt", "~> 2.7"``."""
    for number, text in run:
        match = GEM.match(text) or GEMSPEC.search(text)
        if match:
            yield Pin("rubygems", match.group(1), match.group(2), number)


def _gemfile_lock(run: Sequence[Line]) -> Iterator[Pin]:
    """Read Gemfile.lock's resolved specs: ``    jwt (2.8.1)``."""
    return _line_pins(run, "rubygems", GEM_LOCK)


# -- Maven and Gradle

XML_TOKEN = re.compile(
    r"<(/?)(dependency|parent|plugin|extension|exclusion|properties)>"
    r"|<(groupId|artifactId|version)>\s*([^<\s]+)\s*</\3>"
    r"|<([A-Za-z_][\w.-]*)>\s*([^<\s]+)\s*</\5>"
)
VERSION_PROPERTY = re.compile(r"(.+?)(?:[.-]version|Version)$|version[.-](.+)$")
GRADLE_GAV = re.compile(r"""["']([\w.-]+):([\w.-]+):([^"'@:\s$]+)(?::[\w.-]+)?(?:@\w+)?["']""")
GRADLE_PLUGIN = re.compile(
    r"""\bid\s*\(?\s*["']([\w.-]+)["']\s*\)?\s+version\s*\(?\s*["']([^"'$]+)["']"""
)
GRADLE_VARIABLE = re.compile(
    r"""^\s*(?:(?:val|var|def)\s+|ext\.)?(\w+?)[_.-]?[Vv]ersion\s*=\s*["']([^"']+)["']"""
)
GRADLE_PROPERTY = re.compile(r"^\s*([\w.-]+?)[_.-]?[Vv]ersion\s*[=:]\s*(\S+)")
GRADLE_LOCK = re.compile(r"^([\w.-]+):([\w.-]+):([^=\s]+)=")
CATALOG_ENTRY = re.compile(r"^\s*([\w.-]+)\s*=\s*(.+?)\s*$")
CATALOG_FIELD = re.compile(r'([\w.]+)\s*=\s*"([^"]*)"')


@dataclass
class _Element:
    """Collect one <dependency>, <parent> or <plugin>'s coordinates while reading a pom."""

    tag: str
    group: str = ""
    artifact: str = ""
    version: Line | None = None

    def pin(self) -> Pin | None:
        """Return the element's pin, or None without a name or a literal version."""
        if not self.artifact or self.version is None or self.tag == "exclusion":
            return None
        name = f"{self.group}:{self.artifact}" if self.group else self.artifact
        return Pin("maven", name, self.version[1], self.version[0])


def _property_stem(tag: str) -> str | None:
    """Return the package a version property names (``jackson.version`` → jackson), or None."""
    match = VERSION_PROPERTY.fullmatch(tag)
    stem = match and (match.group(1) or match.group(2))
    return stem if stem and stem not in NOT_DEPENDENCIES and not stem.startswith("maven.") else None


def _pom(run: Sequence[Line]) -> Iterator[Pin]:
    """Read pom.xml: coordinates inside <dependency>/<parent>/<plugin>, and version properties.

    An element opened above the hunk is reported only when its closing tag is in sight, so
    the project's own <version> is never taken for a dependency's.
    """
    stack: list[_Element] = []
    loose = _Element("")  # values seen before any opening tag in this run
    properties: list[tuple[str, str, int]] = []
    users: dict[str, list[str]] = {}
    for number, text in run:
        for token in XML_TOKEN.finditer(text):
            closing, tag, field, value, other, other_value = token.groups()
            if other:
                if _property_stem(other) and not other_value.startswith("$"):
                    properties.append((other, other_value, number))
            elif field:
                _set_field(stack[-1] if stack else loose, field, value, number)
            elif tag == "properties":
                continue
            elif not closing:
                stack.append(_Element(tag))
            elif stack:
                yield from _element_pins(stack.pop(), users)
            else:  # the element opened above the hunk: its closing tag says what it was
                loose.tag = tag
                yield from _element_pins(loose, users)
                loose = _Element("")
    for element in stack:
        yield from _element_pins(element, users)
    for name, value, number in properties:
        for user in users.get(name) or [_property_stem(name) or name]:
            yield Pin("maven", user, value, number)


def _set_field(element: _Element, field: str, value: str, number: int) -> None:
    """Record one coordinate of a pom element."""
    if field == "groupId":
        element.group = value
    elif field == "artifactId":
        element.artifact = value
    else:
        element.version = (number, value)


def _element_pins(element: _Element, users: dict[str, list[str]]) -> Iterator[Pin]:
    """Yield an element's pin, or note it as a user of the ``${property}`` it takes its version from."""
    pin = element.pin()
    if pin is None:
        return
    if pin[2].startswith("${") and pin[2].endswith("}"):
        users.setdefault(pin[2][2:-1], []).append(pin[1])
    else:
        yield pin


def _gradle(run: Sequence[Line]) -> Iterator[Pin]:
    """Read Gradle build scripts: ``"group:name:version"``, plugin versions, ``xVersion = "..."``."""
    for number, text in run:
        for match in GRADLE_GAV.finditer(text):
            yield Pin("maven", f"{match.group(1)}:{match.group(2)}", match.group(3), number)
        plugin = GRADLE_PLUGIN.search(text)
        variable = None if plugin else GRADLE_VARIABLE.match(text)
        found = plugin or variable
        if found and found.group(1) not in NOT_DEPENDENCIES:
            yield Pin("maven", found.group(1), found.group(2), number)


def _gradle_properties(run: Sequence[Line]) -> Iterator[Pin]:
    """Read gradle.properties: ``jjwtVersion=0.12.5`` or ``kotlin.version=2.0.0``."""
    for number, text in run:
        match = GRADLE_PROPERTY.match(text)
        if (
            match
            and match.group(1) not in NOT_DEPENDENCIES
            and not match.group(1).startswith("org.")
        ):
            yield Pin("maven", match.group(1), match.group(2), number)


def _gradle_lock(run: Sequence[Line]) -> Iterator[Pin]:
    """Read gradle.lockfile: ``group:name:version=configurations``."""
    for number, text in run:
        match = GRADLE_LOCK.match(text)
        if match:
            yield Pin("maven", f"{match.group(1)}:{match.group(2)}", match.group(3), number)


def _catalog(run: Sequence[Line]) -> Iterator[Pin]:
    """Read a Gradle version catalog (libs.versions.toml): [versions] aliases, [libraries], [plugins]."""
    section: str | None = None
    aliases: list[tuple[str, str, int]] = []
    users: dict[str, list[str]] = {}
    for number, text in run:
        header = TOML_HEADER.match(text)
        entry = None if header else CATALOG_ENTRY.match(text)
        if header:
            section = header.group(1)
        elif entry:
            key, value = entry.groups()
            fields = dict(CATALOG_FIELD.findall(value))
            string = value[1:-1] if value[:1] == '"' and value[-1:] == '"' else None
            gav = GRADLE_GAV.fullmatch(value)
            module = fields.get("module") or fields.get("id")
            if not module and "group" in fields and "name" in fields:
                module = f"{fields['group']}:{fields['name']}"
            version = (
                fields.get("version")
                or fields.get("require")
                or fields.get("strictly")
                or fields.get("prefer")
            )
            if gav:
                yield Pin("maven", f"{gav.group(1)}:{gav.group(2)}", gav.group(3), number)
            elif module and version:
                yield Pin("maven", module, version, number)
            elif module and "version.ref" in fields:
                users.setdefault(fields["version.ref"], []).append(module)
            elif section in (None, "versions") and (string or version):
                aliases.append((key, string or version or "", number))
    for alias, version, number in aliases:
        for name in users.get(alias) or [alias]:
            yield Pin("maven", name, version, number)


# -- GitHub Actions, Docker images, pre-commit

USES = re.compile(r"""^\s*(?:-\s*)?uses:\s*["']?([^\s"'#@]+)@([^\s"'#]+)["']?\s*(?:#\s*(.*))?$""")
USES_DOCKER = re.compile(r"""^\s*(?:-\s*)?uses:\s*["']?docker://([^\s"'#]+)""")
IMAGE = re.compile(r"""^\s*(?:-\s*)?(?:image|container):\s*["']?([^\s"'#{}]+)["']?\s*(?:#.*)?$""")
DOCKER_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)", re.IGNORECASE)
DOCKER_COPY_FROM = re.compile(r"^\s*COPY\s.*?--from=(\S+)", re.IGNORECASE)
# ARG ALPINE_VERSION=3.20 feeding `FROM ruby:${RUBY_VERSION}-alpine${ALPINE_VERSION}`.
DOCKER_ARG = re.compile(
    r"""^\s*(?:ARG|ENV)\s+([A-Za-z][A-Za-z0-9_]*?)_VERSION[=\s]\s*["']?([^\s"']+)"""
)
TAG_START = re.compile(r"v?\d")
YAML_IMAGE_KEY = re.compile(
    r"""^(\s*)(-\s+)?(repository|newName|name|tag|newTag):\s*["']?([^\s"'#]*)"""
)
PRE_COMMIT_REPO = re.compile(r"""^\s*-\s*repo:\s*["']?([^\s"'#]+)""")
PRE_COMMIT_REV = re.compile(r"""^\s*rev:\s*["']?([^\s"'#]+)["']?\s*(?:#\s*(.*))?$""")


def _tagged(ecosystem: str, name: str, ref: str, comment: str | None, number: int) -> Pin | None:
    """Return a git ref's pin: the ref itself, or for a commit SHA the trailing comment's version.

    A SHA is no version, but it says which commit runs: the pin keeps it as the revision,
    so a rewritten comment on an unchanged SHA is no bump.
    """
    if not (HEX_REF.fullmatch(ref) and not ref.isdigit()):
        return Pin(ecosystem, name, ref, number)
    version = pin_version(comment, keep_v=True) if comment else None
    return Pin(ecosystem, name, version, number, revision=ref) if version else None


def image_ref(ref: str) -> tuple[str, str] | None:
    """Split an image reference into (name, tag); None without a versioned tag.

    A digest (``@sha256:…``) pins content, not a version, so it is dropped; a tag that does
    not start with a number (``latest``, ``bookworm``) or holds a variable is no version.
    """
    ref = ref.split("@", 1)[0]
    slash, colon = ref.rfind("/"), ref.rfind(":")
    if colon <= slash or "$" in ref or "{" in ref:
        return None
    name, tag = ref[:colon], ref[colon + 1 :]
    return (name, tag) if TAG_START.match(tag) else None


def _image_pins(ref: str, number: int) -> Iterator[Pin]:
    """Yield the pin of one image reference, if it has a versioned tag."""
    found = image_ref(ref)
    if found:
        yield Pin("docker", found[0], found[1], number)


def _workflow(run: Sequence[Line]) -> Iterator[Pin]:
    """Read a workflow or action.yml: ``uses: owner/repo@v4`` (or ``@<sha> # v4.1.0``) and images."""
    for number, text in run:
        uses = USES.match(text)
        pin = _tagged("actions", uses[1], uses[2], uses[3], number) if uses else None
        if pin and not pin.name.startswith("."):
            yield pin
            continue
        image = IMAGE.match(text) or USES_DOCKER.match(text)
        if image:
            yield from _image_pins(image.group(1), number)


def _dockerfile(run: Sequence[Line]) -> Iterator[Pin]:
    """Read a Dockerfile: ``FROM image:tag``, ``COPY --from=image:tag``, ``ARG NAME_VERSION=x``."""
    for number, text in run:
        match = DOCKER_FROM.match(text) or DOCKER_COPY_FROM.match(text)
        if match:
            yield from _image_pins(match.group(1), number)
        argument = None if match else DOCKER_ARG.match(text)
        if argument:
            name = argument.group(1).lower().replace("_", "-")
            yield Pin("docker", name, argument.group(2), number)


def yaml_images(*, kustomize: bool) -> Parser:
    """Read images in Compose, Kubernetes and Helm YAML: ``image: name:tag``, ``repository:`` + ``tag:``."""
    repository_keys = ("repository", "newName", "name") if kustomize else ("repository", "newName")
    tag_keys = ("newTag",) if kustomize else ("tag", "newTag")

    def parse(run: Sequence[Line]) -> Iterator[Pin]:
        repository: tuple[int, str] | None = None  # (indent, name) of the block's repository key
        for number, text in run:
            image = IMAGE.match(text) if "image:" in text else None
            if image:
                yield from _image_pins(image.group(1), number)
                continue
            key = YAML_IMAGE_KEY.match(text)
            indent = len(text) - len(text.lstrip(" -"))
            if repository and indent < repository[0]:
                repository = None
            if key and key.group(3) in repository_keys and key.group(4):
                repository = (indent, key.group(4))
            elif (
                key
                and key.group(3) in tag_keys
                and repository
                and indent == repository[0]
                and TAG_START.match(key.group(4))
            ):
                yield Pin("docker", repository[1], key.group(4), number)

    return parse


def _pre_commit(run: Sequence[Line]) -> Iterator[Pin]:
    """Read .pre-commit-config.yaml: each ``- repo:`` with its ``rev:`` (a SHA takes the comment's version)."""
    repo: str | None = None
    for number, text in run:
        opened = PRE_COMMIT_REPO.match(text)
        if opened:
            repo = opened.group(1) if "/" in opened.group(1) else None  # not local or meta
            continue
        rev = PRE_COMMIT_REV.match(text)
        pin = _tagged("pre-commit", repo, rev[1], rev[2], number) if rev and repo else None
        if pin:
            yield pin


# -- Terraform

HCL_BLOCK = re.compile(r'^\s*([\w-]+)((?:\s+"[^"]*")*)\s*\{\s*$')
HCL_OBJECT = re.compile(r"^\s*([\w-]+)\s*=\s*\{\s*$")
HCL_INLINE = re.compile(r"^\s*([\w-]+)\s*=\s*\{([^{}]*)\}")
HCL_ATTRIBUTE = re.compile(r'^\s*(source|version)\s*=\s*"([^"]*)"')
HCL_FIELD = re.compile(r'\b(source|version)\s*=\s*"([^"]*)"')
GIT_REF = re.compile(r"^(.*?)[?&]ref=([^&]+)$")


@dataclass
class _Block:
    """Collect one HCL block's ``source`` and ``version`` while reading Terraform."""

    kind: str  # module, provider, required_providers, entry (aws = {...}), other, or "" unknown
    label: str = ""
    source: str = ""
    version: Line | None = None


def _terraform(run: Sequence[Line]) -> Iterator[Pin]:
    """Read Terraform: required_providers entries, module and provider blocks, .terraform.lock.hcl."""
    stack: list[_Block] = [_Block("")]
    for number, text in run:
        inline = HCL_INLINE.match(text)
        block = HCL_BLOCK.match(text)
        entry = HCL_OBJECT.match(text)
        attribute = HCL_ATTRIBUTE.match(text)
        if inline:
            fields = dict(HCL_FIELD.findall(inline.group(2)))
            one = _Block("entry", inline.group(1), fields.get("source", ""))
            one.version = (number, fields["version"]) if "version" in fields else None
            yield from _block_pins(one, stack[-1])
        elif entry:
            stack.append(_Block("entry", entry.group(1)))
        elif block:
            labels = re.findall(r'"([^"]*)"', block.group(2))
            stack.append(_Block(block.group(1), labels[0] if labels else ""))
        elif attribute:
            _set_attribute(stack[-1], attribute.group(1), attribute.group(2), number)
            yield from _git_ref(stack[-1], attribute.group(1), number)
        elif text.strip().startswith("}"):
            closed = stack.pop() if len(stack) > 1 else stack[0]
            yield from _block_pins(closed, stack[-1])
            if closed is stack[0]:
                stack[0] = _Block("")
    while stack:
        closed = stack.pop()
        yield from _block_pins(closed, stack[-1] if stack else _Block(""))


def _set_attribute(block: _Block, key: str, value: str, number: int) -> None:
    """Record a block's source or version."""
    if key == "source":
        block.source = value
    else:
        block.version = (number, value)


def _git_ref(block: _Block, key: str, number: int) -> Iterator[Pin]:
    """Yield a module pinned by ``source = "git::…?ref=v1.2.0"``."""
    ref = GIT_REF.match(block.source) if key == "source" else None
    if ref:
        yield Pin("terraform", ref.group(1), ref.group(2), number)


def _block_pins(block: _Block, parent: _Block) -> Iterator[Pin]:
    """Yield the provider or module a closed block pins, if it names one and a version."""
    if block.version is None:
        return
    name = ""
    if block.kind in ("module", "") and block.source and not block.source.startswith("."):
        name = block.source
    elif block.kind == "provider" and block.label:
        name = block.label
    elif block.kind == "entry" and (parent.kind == "required_providers" or block.source):
        name = block.source or block.label
    if name and not GIT_REF.match(name):
        name = name if "/" in name else f"hashicorp/{name}"  # the implied provider namespace
        yield Pin("terraform", name, block.version[1], block.version[0])


# ---- which files are read, and how -------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """Say how to read one kind of dependency file and how much its versions count."""

    ecosystem: str
    parse: Parser
    rank: int = 0  # 0: a manifest's pin or range; 1: a lock's resolved version; 2: exact (go.mod)
    manifest: bool = True  # the file exists to declare versions (a Dockerfile does more)


_PYPROJECT = Format("pip", toml_manifest("pip", pep508=True))
_PIP_LOCK = Format("pip", toml_lock("pip", file_names=True), 1)
_NPM_LOCK = Format("npm", _npm_lock, 1)
_GRADLE = Format("maven", _gradle)
_GEMFILE = Format("rubygems", _gemfile)
_GEMFILE_LOCK = Format("rubygems", _gemfile_lock, 1)
_DOCKERFILE = Format("docker", _dockerfile, manifest=False)
_KUSTOMIZE = Format("docker", yaml_images(kustomize=True), manifest=False)
_PRE_COMMIT = Format("pre-commit", _pre_commit)
FILE_NAMES: dict[str, Format] = {
    "pyproject.toml": _PYPROJECT,
    "Pipfile": Format("pip", toml_manifest("pip", pep508=False)),
    "Pipfile.lock": Format("pip", _pipfile_lock, 1),
    "poetry.lock": _PIP_LOCK,
    "uv.lock": _PIP_LOCK,
    "pdm.lock": _PIP_LOCK,
    "package.json": Format("npm", _package_json),
    "package-lock.json": _NPM_LOCK,
    "npm-shrinkwrap.json": _NPM_LOCK,
    "pnpm-lock.yaml": Format("npm", _pnpm_lock, 1),
    "yarn.lock": Format("npm", _yarn_lock, 1),
    "go.mod": Format("go", _go_mod, 2),
    "go.sum": Format("go", _go_sum, 1),
    "Cargo.toml": Format("cargo", toml_manifest("cargo", pep508=False)),
    "Cargo.lock": Format("cargo", toml_lock("cargo", file_names=False), 1),
    "pom.xml": Format("maven", _pom),
    "build.gradle": _GRADLE,
    "build.gradle.kts": _GRADLE,
    "settings.gradle": _GRADLE,
    "settings.gradle.kts": _GRADLE,
    "gradle.properties": Format("maven", _gradle_properties),
    "gradle.lockfile": Format("maven", _gradle_lock, 1),
    "Gemfile": _GEMFILE,
    "gems.rb": _GEMFILE,
    "Gemfile.lock": _GEMFILE_LOCK,
    "gems.locked": _GEMFILE_LOCK,
    ".terraform.lock.hcl": Format("terraform", _terraform, 1),
    ".pre-commit-config.yaml": _PRE_COMMIT,
    ".pre-commit-config.yml": _PRE_COMMIT,
    "Dockerfile": _DOCKERFILE,
    "Containerfile": _DOCKERFILE,
    "kustomization.yaml": _KUSTOMIZE,
    "kustomization.yml": _KUSTOMIZE,
}
# Tried in order on the whole path; the first that matches decides.
FILE_PATTERNS: tuple[tuple[str, Format], ...] = (
    (r"(?:.*/)?requirements(?:[^/]*|/[^/]+)\.in", Format("pip", _requirements)),
    (
        r"(?:.*/)?(?:requirements|constraints)(?:[^/]*|/[^/]+)\.(?:txt|lock)",
        Format("pip", _requirements, 1),
    ),
    (r"(?:.*/)?[^/]+\.versions\.toml", Format("maven", _catalog)),
    (r"(?:.*/)?[^/]+\.gemspec", _GEMFILE),
    (r"(?:.*/)?[^/]+\.gradle(?:\.kts)?", _GRADLE),
    (
        r"(?:.*/)?(?:\.github/workflows/[^/]+|action)\.ya?ml",
        Format("actions", _workflow, manifest=False),
    ),
    (
        r"(?:.*/)?(?:Dockerfile|Containerfile)\.[^/]+|.*\.(?:[Dd]ockerfile|[Cc]ontainerfile)",
        _DOCKERFILE,
    ),
    (r".*\.tf", Format("terraform", _terraform, manifest=False)),
    # Compose, Kubernetes and Helm YAML, also as templates (web.yaml.erb, values.yaml.j2).
    (
        r".*\.ya?ml(?:\.(?:erb|j2|jinja2?|tpl|tmpl|gotmpl))?",
        Format("docker", yaml_images(kustomize=False), manifest=False),
    ),
)
_FILE_PATTERN = re.compile("|".join(f"(?P<p{i}>{rx})" for i, (rx, _) in enumerate(FILE_PATTERNS)))


def format_of(path: str) -> Format | None:
    """Return how to read the file at ``path``, or None when it declares no dependency versions."""
    known = FILE_NAMES.get(path.rsplit("/", 1)[-1])
    if known is not None:
        return known
    match = _FILE_PATTERN.fullmatch(path)
    return FILE_PATTERNS[int(match.lastgroup[1:])][1] if match and match.lastgroup else None


def ecosystem_of(path: str) -> str:
    """Return the ecosystem of the dependency file at ``path`` ("" when it is none)."""
    found = format_of(path)
    return found.ecosystem if found else ""


def is_manifest(path: str) -> bool:
    """Tell whether ``path`` is a dependency manifest or lock file cibot understands.

    Dockerfiles, workflows, Terraform and Kubernetes YAML also pin versions that ``bumps``
    reads, but they are configuration first, so they are not manifests.
    """
    found = format_of(path)
    return found is not None and found.manifest


# ---- from two sides to bumps ---------------------------------------------------------------------

Versions = dict[tuple[str, str], dict[str, int]]  # (ecosystem, name) → version → first line
Revisions = dict[tuple[str, str], set[str]]  # (ecosystem, name) → the commits it is pinned to


@dataclass(frozen=True, slots=True)
class _Found:
    """Pair a bump with how much its file's versions count."""

    bump: Bump
    rank: int


def _sides(change: FileChange) -> tuple[list[Line], list[Line]]:
    """Return the old and the new side of a file's hunks, unchanged lines included, in order.

    The unchanged lines are what pair a lock file's ``version`` with the ``name`` above it.
    A FileChange built without hunks (``body``) gives only its changed lines.
    """
    if not change.body:
        return list(change.removed), list(change.added)
    old: list[Line] = []
    new: list[Line] = []
    for hunk in change.body:
        before, after = hunk.source_start, hunk.target_start
        for sign, text in hunk.lines:
            if sign != "+":
                old.append((before, text))
                before += 1
            if sign != "-":
                new.append((after, text))
                after += 1
    return old, new


def _version_of(spec: str, ecosystem: str) -> str | None:
    """Return the version a pin names, spelled the way its ecosystem spells versions."""
    version = pin_version(spec, keep_v=ecosystem in TAGGED)
    if version and ecosystem == "rubygems":
        version = version.split("-", 1)[0]  # nokogiri (1.16.0-x86_64-linux): a platform build
    return version


def _versions(found: Format, lines: Sequence[Line]) -> tuple[Versions, Revisions]:
    """Read one side of a file into (ecosystem, name) → version → the line it is first on."""
    versions: Versions = {}
    revisions: Revisions = {}
    for run in _runs(lines):
        for pin in found.parse(run):
            version = _version_of(pin.spec, pin.ecosystem)
            if version:
                key = (pin.ecosystem, normalise(pin.name, pin.ecosystem))
                versions.setdefault(key, {}).setdefault(version, pin.line)
                if pin.revision:
                    revisions.setdefault(key, set()).add(pin.revision)
    return versions, revisions


def _order(version: str, ecosystem: str) -> tuple[tuple[int, ...], str]:
    """Sort versions by their release numbers, unparsable ones first."""
    parsed = parse_version(version, ecosystem)
    return (parsed.core if parsed else (), version)


def _pairs(old: dict[str, int], new: dict[str, int], ecosystem: str) -> list[tuple[str, str]]:
    """Pair the versions only the old side has with those only the new side has.

    One package can sit in a lock at several versions; equal counts pair in order,
    otherwise the highest old version pairs with the highest new one.
    """
    gone = [v for v in old if v not in new]
    came = [v for v in new if v not in old]
    if not gone or not came:
        return []  # only added or only removed: a new or dropped dependency, not a bump
    if len(gone) > 1 or len(came) > 1:
        gone.sort(key=lambda v: _order(v, ecosystem))
        came.sort(key=lambda v: _order(v, ecosystem))
    return list(zip(gone, came, strict=True)) if len(gone) == len(came) else [(gone[-1], came[-1])]


def _file_bumps(change: FileChange, found: Format) -> tuple[_Found, ...]:
    """Return the bumps in one dependency file, in the order of their new lines."""
    old_side, new_side = _sides(change)
    (old, old_revisions), (new, new_revisions) = (
        _versions(found, old_side),
        _versions(found, new_side),
    )
    out: list[_Found] = []
    for (ecosystem, name), versions in new.items():
        pinned = old_revisions.get((ecosystem, name))
        if pinned and pinned == new_revisions.get((ecosystem, name)):
            continue  # the same commits run: only the version comment was rewritten
        for before, after in _pairs(old.get((ecosystem, name), {}), versions, ecosystem):
            out.append(
                _Found(
                    Bump(change.path, name, before, after, versions[after], ecosystem), found.rank
                )
            )
    out.sort(key=lambda f: f.bump.line)
    return tuple(out)


_CACHE: dict[int, tuple[FileChange, tuple[_Found, ...]]] = {}


def _cached_bumps(change: FileChange) -> tuple[_Found, ...]:
    """Return one file's bumps, computed once per FileChange (several detectors ask)."""
    found = None if change.binary else format_of(change.path)
    if found is None:
        return ()
    hit = _CACHE.get(id(change))
    if hit is not None and hit[0] is change:
        return hit[1]
    result = _file_bumps(change, found)
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[id(change)] = (change, result)
    return result


def _covers(lock: str, manifest: str) -> bool:
    """Tell whether a lock file's folder contains the manifest (workspaces lock at the root)."""
    folder, inner = posixpath.dirname(lock), posixpath.dirname(manifest)
    return not folder or inner == folder or inner.startswith(folder + "/")


def bump_sites(files: Iterable[FileChange]) -> Iterator[Bump]:
    """Yield every file's bumps that no covering lock resolves, one per file and package.

    Unlike ``bumps``, a package moved the same way in two manifests is yielded for each, so
    a caller can say every place a package moves; a manifest's range still yields to a lock
    file's resolved versions for the same package when the lock's folder holds the manifest.
    """
    found = [f for change in files for f in _cached_bumps(change)]
    by_package: dict[tuple[str, str], list[_Found]] = {}
    for item in found:
        by_package.setdefault((item.bump.ecosystem, item.bump.name), []).append(item)
    for item in found:
        rivals = by_package[(item.bump.ecosystem, item.bump.name)]
        if not any(r.rank > item.rank and _covers(r.bump.path, item.bump.path) for r in rivals):
            yield item.bump


def bumps(files: Iterable[FileChange]) -> Iterator[Bump]:
    """Yield every dependency whose version the diff changes, resolved versions preferred.

    A manifest's range yields to a lock file's resolved versions for the same package when
    the lock's folder holds the manifest; one package moved the same way in several files
    is yielded once.
    """
    seen: set[tuple[str, str, str, str]] = set()
    for bump in bump_sites(files):
        key = (bump.ecosystem, bump.name, bump.old, bump.new)
        if key not in seen:
            seen.add(key)
            yield bump


# ---- the knowledge base of security-relevant packages ------------------------------------------


@functools.cache
def knowledge_base() -> Dependencies:
    """Return the packaged knowledge base (policies/packages.yaml), validated."""
    text = resources.files("policies").joinpath("packages.yaml").read_text(encoding="utf-8")
    return Dependencies.model_validate(yaml.safe_load(text))


@dataclass(frozen=True)
class _Names:
    """Match package names against exact names and fnmatch globs in one step."""

    exact: frozenset[str]
    globs: re.Pattern[str] | None

    def __contains__(self, name: object) -> bool:
        """Tell whether ``name`` is listed or matches a glob."""
        if not isinstance(name, str):
            return False
        return name in self.exact or (self.globs is not None and self.globs.match(name) is not None)


def _names(ecosystem: str, entries: Iterable[str]) -> _Names:
    """Compile one ecosystem-and-category list of names and globs."""
    exact: set[str] = set()
    globs: list[str] = []
    for entry in entries:
        name = normalise(entry, ecosystem)
        # A Maven entry without a group (``jjwt*``) matches an artifact in any group, and a
        # bare name: a version property or catalog alias such as ``jjwt`` or ``spring-security``.
        extra = [f"*:{name}"] if ecosystem == "maven" and ":" not in name else []
        for one in (name, *extra):
            if any(c in one for c in "*?["):
                globs.append(one)
            else:
                exact.add(one)
    pattern = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None
    return _Names(frozenset(exact), pattern)


Knowledge = dict[str, tuple[tuple[str, _Names], ...]]
_KNOWLEDGE: dict[int, tuple[Policy, Knowledge]] = {}


def knowledge(policy: Policy) -> Knowledge:
    """Compile the packaged knowledge base plus the policy's additions, once per policy."""
    hit = _KNOWLEDGE.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    merged: dict[str, dict[str, list[str]]] = {}
    for source in (knowledge_base(), policy.dependencies):
        for ecosystem, categories in source.packages.items():
            for category, names in categories.items():
                merged.setdefault(ecosystem, {}).setdefault(category, []).extend(names)
    result: Knowledge = {
        ecosystem: tuple(
            (category, _names(ecosystem, categories[category]))
            for category in CATEGORIES
            if category in categories
        )
        for ecosystem, categories in merged.items()
    }
    if len(_KNOWLEDGE) > 16:
        _KNOWLEDGE.clear()
    _KNOWLEDGE[id(policy)] = (policy, result)
    return result


def categories_of(bump: Bump, policy: Policy) -> tuple[str, ...]:
    """Return every sensitive category the bumped package belongs to (a JWT library: auth, crypto)."""
    return tuple(
        category
        for category, names in knowledge(policy).get(bump.ecosystem, ())
        if bump.name in names
    )


def category_of(bump: Bump, policy: Policy) -> str | None:
    """Return the bumped package's first sensitive category, or None for an ordinary package."""
    found = categories_of(bump, policy)
    return found[0] if found else None


def sensitive_bumps(files: Iterable[FileChange], policy: Policy) -> Iterator[tuple[Bump, str]]:
    """Yield (bump, category) for each category of each bump of a security-relevant package.

    Every GitHub Action, Docker image and Terraform provider or module is infra; other
    packages count when the knowledge base or the policy's ``dependencies`` lists them.
    """
    for bump in bumps(files):
        for category in categories_of(bump, policy):
            yield bump, category
