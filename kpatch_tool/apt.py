"""Debian's archive through a private apt state: exact versions, fetched into kpt's cache.

kpt never installs a tree's package on the host and never touches the host's
apt configuration: it keeps its own sources list, package lists and download
folder under `<cache>/apt/` and runs apt-get/apt-cache with those folders.
The suites are kpt.toml's (`[apt] suites`, a tree's own `suites`), the
mirrors the host's (the URIs of its Debian entries) unless kpt.toml names
them. apt itself verifies every index signature and every file's sha256, so
what lands in the cache is what the archive published.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kpatch_tool import proc, safefs
from kpatch_tool.safefs import sha256_file
from kpatch_tool.errors import KptError, PrereqError, UsageError

DEFAULT_SUITES = ("bookworm", "bookworm-updates", "bookworm-security")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Package lists older than this are refreshed before a version is declared absent.
LISTS_MAX_AGE = 6 * 3600


@dataclass
class Fetched:
    path: Path  # the .deb, or the .dsc of a source package
    sha256: str
    suite: str
    version: str


@dataclass
class Offer:
    version: str
    suite: str


def host_mirrors() -> tuple[str, str]:
    """The host's own Debian mirrors: a user behind a local mirror keeps using it."""
    main = sec = None
    files = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    files.append(Path("/etc/apt/sources.list"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"(?mi)^URIs:\s*(\S+)", stanza)
                suites = re.search(r"(?mi)^Suites:\s*(.+)$", stanza)
                if not uris or not suites:
                    continue
                words = suites.group(1).split()
                if any(w.endswith("-security") for w in words):
                    sec = sec or uris.group(1)
                elif any(re.fullmatch(r"(bookworm|trixie|sid|stable|testing|unstable)(-updates)?", w) for w in words):
                    main = main or uris.group(1)
        else:
            for m in re.finditer(r"(?m)^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text):
                if m.group(2).endswith("-security"):
                    sec = sec or m.group(1)
                elif "debian" in m.group(1):
                    main = main or m.group(1)
    return main or DEFAULT_MIRROR, sec or DEFAULT_SECURITY


class Archive:
    """kpt's own view of Debian's archive (one per workspace cache)."""

    def __init__(self, cache_dir: Path, settings: dict | None = None, extra_suites: tuple[str, ...] = ()):
        self.settings = settings or {}
        suites = list(self.settings.get("suites") or DEFAULT_SUITES)
        extra = [s for s in extra_suites if s not in suites]
        self.suites = suites + extra
        # One apt state per set of suites: the default one, and one per extra set (e.g. "+sid").
        self.root = Path(cache_dir) / "apt" / ("default" if not extra else "+" + "+".join(sorted(extra)))

    # -- configuration ------------------------------------------------------

    def sources_text(self) -> str:
        """The one-line sources kpt's apt uses (kpt.toml `[apt] sources` replaces the derived ones)."""
        explicit = self.settings.get("sources")
        if explicit:
            return "".join(f"{line}\n" for line in explicit)
        host_main, host_sec = host_mirrors()
        main = self.settings.get("mirror") or host_main
        sec = self.settings.get("security_mirror") or host_sec
        signed = f"[signed-by={KEYRING}] " if KEYRING.exists() else ""
        lines = []
        for suite in self.suites:
            uri = sec if suite.endswith("-security") else main
            for kind in ("deb", "deb-src"):
                lines.append(f"{kind} {signed}{uri} {suite} main\n")
        return "".join(lines)

    def _options(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc::SourceList": str(r / "sources.list"),
            "Dir::Etc::SourceParts": str(r / "sources.list.d"),
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": str(r / "preferences.d"),
            "Dir::State": str(r / "state"),
            "Dir::State::status": str(r / "state" / "status"),
            "Dir::Cache": str(r / "cache"),
            "Debug::NoLocking": "1",
            "APT::Get::List-Cleanup": "1",
            # Only what the archive says is the file: no host pinning, no extra architectures.
            "APT::Architectures::": "amd64",
        }
        if self.settings.get("allow_expired"):
            opts["Acquire::Check-Valid-Until"] = "false"
        if os.geteuid() == 0:
            # Downloads into kpt's cache, which apt's _apt user cannot write.
            opts["APT::Sandbox::User"] = "root"
        out = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def _prepare(self) -> bool:
        """Create the private folders; True when the sources changed since the last update."""
        r = self.root
        for d in ("sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"):
            (r / d).mkdir(parents=True, exist_ok=True)
        status = r / "state" / "status"
        if not status.exists():
            status.write_text("")
        text = self.sources_text()
        current = r / "sources.list"
        changed = not current.exists() or current.read_text() != text
        if changed:
            safefs.replace_file(current, text.encode())
            (r / "updated").unlink(missing_ok=True)
        return changed

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 1800) -> proc.ProcResult:
        proc.require(tool, "apt")
        log = self.root / "apt.log"
        return proc.run([tool, *self._options(), *args], cwd=cwd, timeout=timeout, log=log,
                        env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})

    # -- lists ----------------------------------------------------------------

    def lists_age(self) -> float | None:
        stamp = self.root / "updated"
        return time.time() - stamp.stat().st_mtime if stamp.exists() else None

    def update(self, *, force: bool = False, progress=None) -> None:
        """Refresh the package lists when they are missing, stale in shape, or when asked."""
        with self._locked():
            changed = self._prepare()
            if not force and not changed and self.lists_age() is not None:
                return
            if progress:
                progress(f"reading Debian's archive ({', '.join(self.suites)}) into {self.root}")
            res = self._run("apt-get", "update", "-q", timeout=900)
            if not res.ok:
                text = res.stderr.strip() or res.stdout.strip() or "no output"
                errs = [line for line in text.splitlines() if line.startswith("E:")]
                first = errs[0] if errs else text.splitlines()[-1]
                hint = ""
                if "is expired" in first:
                    hint = ("; the mirror serves an old snapshot of these suites: `[apt] allow_expired = true` in "
                            "kpt.toml accepts it (files are still checked against the signed Release's hashes)")
                raise PrereqError(f"cannot read Debian's archive ({', '.join(self.suites)}) with kpt's apt state "
                                  f"({self.root}): {first}{hint}")
            (self.root / "updated").write_text(str(int(time.time())) + "\n")

    def offers(self, package: str, *, source: bool = False) -> list[Offer]:
        """Every version the archive offers, newest first (apt's own order)."""
        self.update()
        res = self._run("apt-cache", "madison", package, timeout=120)
        out: list[Offer] = []
        for line in res.stdout.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3 or parts[0] != package:
                continue
            is_src = parts[2].endswith("Sources")
            if is_src != source:
                continue
            where = parts[2].split()
            suite = where[1].split("/")[0] if len(where) > 1 else "?"
            if all(o.version != parts[1] for o in out):
                out.append(Offer(parts[1], suite))
        return out

    def source_of(self, package: str, version: str) -> tuple[str, str] | None:
        """(source package, source version) a binary package's version was built from; None if unknown."""
        self.update()
        res = self._run("apt-cache", "show", f"{package}={version}", timeout=120)
        if not res.ok or not re.search(rf"(?m)^Package:[ \t]*{re.escape(package)}[ \t]*$", res.stdout):
            return None  # apt-cache says so on stderr only, and may exit 0
        m = re.search(r"(?m)^Source:[ \t]*(\S+)(?:[ \t]+\((\S+)\))?", res.stdout)
        if not m:
            return package, version
        return m.group(1), m.group(2) or version

    def _find(self, package: str, version: str, *, source: bool, progress=None) -> Offer:
        offers = self.offers(package, source=source)
        hit = [o for o in offers if version in (o.version, noepoch(o.version))]
        if not hit and (self.lists_age() or 0) > 60:
            # The lists may predate the version: read the archive once more before saying no.
            self.update(force=True, progress=progress)
            offers = self.offers(package, source=source)
            hit = [o for o in offers if version in (o.version, noepoch(o.version))]
        if not hit:
            raise VersionGone(package, version, offers, source=source)
        return hit[0]

    # -- downloads ------------------------------------------------------------

    def fetch_deb(self, package: str, version: str, dest: Path, *, progress=None) -> Fetched:
        """The .deb of package at exactly version, in dest (downloaded once)."""
        offer = self._find(package, version, source=False, progress=progress)
        dest.mkdir(parents=True, exist_ok=True)
        have = self._existing(dest, f"{package}_{noepoch(offer.version)}_*.deb")
        if have is None:
            if progress:
                progress(f"downloading {package} {version} ({offer.suite})")
            res = self._run("apt-get", "download", "-q", f"{package}={offer.version}", cwd=dest)
            if not res.ok:
                raise _download_error(package, version, res)
            have = self._existing(dest, f"{package}_{noepoch(offer.version)}_*.deb")
            if have is None:
                raise KptError(f"apt-get download {package}={version} left no .deb in {dest}")
        return Fetched(have, sha256_file(have), offer.suite, offer.version)

    def fetch_source(self, package: str, version: str, dest: Path, *, progress=None) -> Fetched:
        """The source package's files (.dsc and what it names), in dest."""
        offer = self._find(package, version, source=True, progress=progress)
        dest.mkdir(parents=True, exist_ok=True)
        dsc = dest / f"{package}_{noepoch(offer.version)}.dsc"
        if not dsc.exists():
            if progress:
                progress(f"downloading the source of {package} {version} ({offer.suite})")
            res = self._run("apt-get", "source", "--download-only", "-q", f"{package}={offer.version}", cwd=dest)
            if not res.ok or not dsc.exists():
                raise _download_error(package, version, res, source=True)
        return Fetched(dsc, sha256_file(dsc), offer.suite, offer.version)

    @staticmethod
    def _existing(dest: Path, pattern: str) -> Path | None:
        hits = sorted(dest.glob(pattern))
        return hits[0] if hits else None


class VersionGone(PrereqError):
    """The pinned version is not (or no longer) in the archive kpt reads."""

    def __init__(self, package: str, version: str, offers: list[Offer], *, source: bool = False):
        self.package, self.version, self.offered = package, version, offers
        what = "source package" if source else "package"
        have = ", ".join(f"{o.version} ({o.suite})" for o in offers[:8]) or "none"
        super().__init__(f"Debian {what} {package} {version} is not in the archive kpt reads; it offers: {have}")


def noepoch(version: str) -> str:
    return version.split(":", 1)[1] if ":" in version else version


def _download_error(package: str, version: str, res: proc.ProcResult, *, source: bool = False) -> KptError:
    text = (res.stderr.strip() or res.stdout.strip() or "no output")
    lines = text.splitlines()
    # apt ends with "E: Failed to fetch some archives."; the line naming the file and the 404 says more.
    fetch = [line for line in lines if line.startswith("E: Failed to fetch http")]
    last = (fetch[0] + f" (the archive lists {version} but its mirror does not have the file; pin another version)"
            if fetch and "404" in fetch[0] else lines[-1])
    if "No space left" in text:
        return UsageError(f"no space left while downloading {package} {version}: {last}")
    cmd = "apt-get source" if source else "apt-get download"
    return PrereqError(f"{cmd} {package}={version} failed: {last}")


def compare_versions(a: str, b: str) -> int:
    """Debian version order (dpkg's own comparison), -1/0/1."""
    if a == b:
        return 0
    res = proc.run(["dpkg", "--compare-versions", a, "lt", b], timeout=30)
    return -1 if res.returncode == 0 else 1
