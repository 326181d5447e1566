"""A build job's artifacts: the kernel a run built, carried to boot jobs on other runners.

`kpt ci ... --stop-after build` copies what a boot needs (bzImage, the modules'
staging folder, .config, System.map, kernel.release, the build stamp) into
`<run>/build/` and lists every file with its sha256 in the manifest
(`outputs.exported`). `kpt ci --from-artifacts DIR` reads that run folder (or the
newest such run inside DIR), checks every hash, and boots that kernel: a
truncated upload or a swapped file is an error naming the file, never a boot
of something else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kpatch_tool import build as buildmod
from kpatch_tool.errors import UsageError
from kpatch_tool.runfolder import MANIFEST, read_manifest
from kpatch_tool.safefs import sha256_file

EXPORT_DIR = "build"


def export_build(run_dir: Path, b: buildmod.BuildResult) -> dict:
    """Copy the build's boot inputs into run_dir/build; the manifest entry that lists them."""
    dest = run_dir / EXPORT_DIR
    shutil.rmtree(dest, ignore_errors=True)
    for rel in (*buildmod.LINUX_SHARED_FILES, buildmod.STAMP):
        src = b.build_dir / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, symlinks=True)
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
    files = {str(p.relative_to(dest)): sha256_file(p) for p in sorted(dest.rglob("*"))
             if p.is_file() and not p.is_symlink()}
    return {"dir": EXPORT_DIR, "files": files, "kernel_release": b.kernel_release, "profile": b.profile,
            "config_hash": b.config_hash, "tree": b.tree}


def find_run(where: Path) -> Path:
    """The run folder to resume: `where` itself, or the newest complete build run directly inside it."""
    where = Path(where)
    if not where.is_dir():
        raise UsageError(f"{where}: no such folder (the build job's artifacts were not downloaded?)")
    if (where / MANIFEST).is_file():
        return where
    runs = []
    for d in where.iterdir():
        try:
            data = json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and (data.get("outputs") or {}).get("exported"):
            runs.append(d)
    if not runs:
        raise UsageError(f"{where}: no run folder with exported build artifacts "
                         "(made by `kpt ci ... --stop-after build`)")
    return max(runs, key=lambda d: d.name)


def load_build(where: Path) -> tuple[Path, dict, buildmod.BuildResult]:
    """(run folder, its manifest, the build it exported), every file's hash checked."""
    run = find_run(where)
    manifest = read_manifest(run)
    exp = (manifest.get("outputs") or {}).get("exported")
    if manifest.get("exit_code") not in (0, None) or not isinstance(exp, dict):
        raise UsageError(f"{run}: the build run did not export a kernel (exit {manifest.get('exit_code')}; "
                         "artifacts come from a successful `kpt ci ... --stop-after build`)")
    base = run / exp["dir"]
    for rel, digest in exp["files"].items():
        p = base / rel
        if not p.is_file():
            raise UsageError(f"{p}: missing from the build artifacts of {run.name}")
        if sha256_file(p) != digest:
            raise UsageError(f"{p}: sha256 differs from the build manifest's ({digest[:12]}...): "
                             "a corrupted or replaced artifact")
    stamp = buildmod.read_stamp(base) or {}
    b = buildmod.BuildResult(tree=exp["tree"], srctree=base, build_dir=base, cached=True, duration=0.0,
                             log=base / "build.log", warnings=stamp.get("warnings", []),
                             artifacts={k: buildmod.Artifact(**v) for k, v in stamp.get("artifacts", {}).items()},
                             identity=stamp.get("identity", {}), profile=exp["profile"],
                             config_hash=exp["config_hash"], kernel_release=exp["kernel_release"])
    return run, manifest, b
