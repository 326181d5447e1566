"""The workspace: kpt.toml, where trees come from, where caches and runs live."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import safefs
from kpatch_tool.errors import UsageError

WORKSPACE_FILE = "kpt.toml"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Tree and series names become folder names (patches/<series>/<tree>, the cache's
# trees/<tree> and worktrees/<tree>/kpt-<series>-vN) and git ref components
# (kpt/<series>/vN): a name must stay one path component and one valid ref part.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
NAME_RULE = "letters, digits, . _ + -, starting with a letter or digit, no '..'"


def valid_name(name) -> bool:
    return (isinstance(name, str) and bool(NAME_RE.match(name)) and ".." not in name
            and not name.endswith((".", ".lock")))


@dataclass
class TreeSpec:
    """A tree as the workspace names it: where its source comes from."""

    name: str
    source: str
    # Extra per-tree settings (e.g. the version to fetch for debian-src).
    version: str | None = None
    kind: str = "linux"  # linux, qemu or xen: what the tree is, for build/mail
    # Debian suites this tree's versions come from, beside [apt] suites (e.g. "sid").
    suites: tuple[str, ...] = ()


@dataclass
class Workspace:
    root: Path
    trees: dict[str, TreeSpec] = field(default_factory=dict)
    cache_dir: Path = Path()
    data: dict = field(default_factory=dict)

    @property
    def patches_dir(self) -> Path:
        return self.root / self.data.get("patches_dir", "patches")

    @property
    def configs_dir(self) -> Path:
        return self.root / self.data.get("configs_dir", "kernel-configs")

    @property
    def out_dir(self) -> Path:
        return Path(os.environ.get("KPT_OUT", self.root / "out"))

    @property
    def trees_dir(self) -> Path:
        return self.cache_dir / "trees"

    def tree(self, name: str) -> TreeSpec:
        try:
            return self.trees[name]
        except KeyError:
            known = ", ".join(sorted(self.trees)) or "none"
            raise UsageError(
                f"unknown tree '{name}' (workspace {self.root / WORKSPACE_FILE} has: {known})"
            ) from None


def default_cache_dir() -> Path:
    if os.environ.get("KPT_CACHE"):
        return Path(os.environ["KPT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "kpt"


def find_root(start: Path | None = None) -> Path:
    if os.environ.get("KPT_WORKSPACE"):
        return Path(os.environ["KPT_WORKSPACE"]).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / WORKSPACE_FILE).is_file():
            return d
    # Outside any workspace the project's own one (with its shipped series) applies.
    return PROJECT_ROOT


def load(root: Path | None = None) -> Workspace:
    root = Path(root).resolve() if root else find_root()
    path = root / WORKSPACE_FILE
    if not path.is_file():
        raise UsageError(f"{path}: no workspace file (create kpt.toml, see README)")
    from kpatch_tool.userfile import read_text

    try:
        data = tomllib.loads(read_text(path, "workspace file"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    trees = {}
    if not isinstance(data.get("trees", {}), dict):
        raise UsageError(f"{path}: 'trees' must be a table of [trees.<name>] tables")
    for name, spec in (data.get("trees") or {}).items():
        if not valid_name(name):
            raise UsageError(f"{path}: [trees.{name!r}]: not a valid tree name ({NAME_RULE})")
        if not isinstance(spec, dict) or "source" not in spec:
            raise UsageError(f"{path}: [trees.{name}] needs a 'source'")
        for key in ("source", "version", "kind", "ref"):
            if key in spec and not isinstance(spec[key], str):
                raise UsageError(f"{path}: [trees.{name}] '{key}' must be a string")
        tail = spec["source"].split(":", 1)[1] if spec["source"].startswith(("debian:", "debian-src:")) else spec["source"]
        if not tail.strip() or tail.lstrip().startswith("-") or spec.get("version", "").startswith("-"):
            # It reaches git clone / apt-get source as an argument: never as an option.
            raise UsageError(f"{path}: [trees.{name}] source '{spec['source']}' must not be empty or start with '-'")
        kind = spec.get("kind") or name.split("-")[0]
        if kind not in ("linux", "qemu", "xen"):
            kind = "linux"
        version = spec.get("version")
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise UsageError(f"{path}: [trees.{name}] version must be a Debian version string")
        suites = spec.get("suites") or []
        if not isinstance(suites, list) or not all(isinstance(x, str) and x.strip() for x in suites):
            raise UsageError(f"{path}: [trees.{name}] suites must be a list of suite names")
        if not isinstance(spec["source"], str) or not spec["source"].strip() or spec["source"].startswith("-"):
            raise UsageError(f"{path}: [trees.{name}] source must be a path, URL or debian:/debian-src: package")
        trees[name] = TreeSpec(name, spec["source"], version, kind, tuple(suites))
    for key in ("cache_dir", "patches_dir", "configs_dir"):
        if key in data and not isinstance(data[key], str):
            raise UsageError(f"{path}: '{key}' must be a string (a folder)")
    cache = Path(data["cache_dir"]).expanduser() if data.get("cache_dir") else default_cache_dir()
    from kpatch_tool.sharedcache import settings

    settings(data, path)  # a bad [fleet] table is named now, not at the first build
    safefs.use_digest_memo(cache / "digests.json")
    return Workspace(root=root, trees=trees, cache_dir=cache, data=data)


def tree_ref(spec: str) -> tuple[str, str | None]:
    """`TREE=REF` or `TREE` (its own base): the one parser of that form (--onto, matrix bases)."""
    tree, _, ref = spec.strip().partition("=")
    return tree.strip(), ref.strip() or None
