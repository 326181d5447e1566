"""Reports of a run folder: text, JSON, JUnit and a self-contained HTML page.

results.json / results.xml hold one schema for the whole run: a testcase per
stage (apply, config, build, ...) in class `stages.<mode>` next to the boot's
KTAP results, so a run that stopped at the build is a red JUnit file too, not
an empty one.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import markupsafe

from kpatch_tool import phases as phasesmod
from kpatch_tool import results, runfolder, templating
from kpatch_tool.errors import UsageError
from kpatch_tool.runfolder import MANIFEST, STAGES

REPORT_HTML = "report.html"
SUMMARY_TXT = "summary.txt"


load_manifest = runfolder.read_manifest


def merged_results(run_dir: Path, manifest: dict) -> results.RunResults:
    """The boot's results (if the boot ran) plus a testcase per stage."""
    mode = manifest["inputs"]["mode"]
    path = run_dir / results.RESULTS_JSON
    if path.exists():
        rr = results.load_json(path)
        rr.cases = [c for c in rr.cases if not c.classname.startswith("stages.")]
    else:
        err = manifest.get("error") or {}
        rr = results.RunResults(mode=mode, verdict="not-booted",
                                message=f"stopped at {err.get('stage') or 'an earlier stage'}: {err.get('message', '')}")
    stage_cases = []
    seen = set()
    for st in manifest.get("stages", []):
        if st["name"] == "report":
            continue
        seen.add(st["name"])
        status = {"ok": "pass", "cached": "pass", "skipped": "skip", "failed": "fail"}.get(st["status"], "fail")
        stage_cases.append(results.CaseResult(f"stages.{mode}", st["name"], status,
                                              st.get("note", "") if status != "pass" else "",
                                              f"{st['status']} in {st['end'] - st['start']:.1f}s: {st.get('note', '')}"))
    for name in STAGES:
        if name not in seen and name != "report":
            stage_cases.append(results.CaseResult(f"stages.{mode}", name, "skip", "not reached"))
    rr.cases = stage_cases + rr.cases
    return rr


def write_all(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    rr = merged_results(run_dir, manifest)
    out = [results.write_json(run_dir / results.RESULTS_JSON, rr),
           results.write_junit(run_dir / results.RESULTS_XML, rr)]
    (run_dir / SUMMARY_TXT).write_text(text(run_dir, manifest, rr))
    out.append(run_dir / SUMMARY_TXT)
    (run_dir / REPORT_HTML).write_text(render_html(run_dir, manifest, rr))
    out.append(run_dir / REPORT_HTML)
    return out


def text(run_dir: Path, manifest: dict, rr: results.RunResults | None = None) -> str:
    rr = rr or merged_results(run_dir, manifest)
    inp = manifest["inputs"]
    lines = [f"run {manifest['run_id']}: {inp.get('series') or 'base'} on {inp.get('tree')} in {inp['mode']} mode"
             f" -> exit {manifest.get('exit_code')}"]
    for st in manifest.get("stages", []):
        lines.append(f"  {st['name']:7} {st['status']:7} {st['end'] - st['start']:7.1f}s  {st.get('note', '')}")
    c = rr.counts()
    lines.append(f"  results: {c.get('pass', 0)} passed, {c.get('fail', 0)} failed, {c.get('skip', 0)} skipped"
                 f" ({rr.verdict})")
    for case in rr.cases:
        if case.status == "fail":
            lines.append(f"  not ok {case.classname}:{case.name} # {case.reason}")
    if manifest.get("error"):
        lines.append(f"  error: {manifest['error']['message']}")
    return "\n".join(lines) + "\n"


def _timeline_svg(stages: list[dict], width: int = 720) -> str:
    if not stages:
        return ""
    t0 = min(s["start"] for s in stages)
    total = max(max(s["end"] for s in stages) - t0, 0.001)
    colours = {"ok": "#2e7d32", "cached": "#0277bd", "failed": "#c62828", "skipped": "#9e9e9e"}
    rows = []
    for i, s in enumerate(stages):
        x = 110 + (s["start"] - t0) / total * (width - 120)
        w = max(2.0, (s["end"] - s["start"]) / total * (width - 120))
        y = 8 + i * 22
        rows.append(f'<text x="4" y="{y + 13}" font-size="12">{html.escape(s["name"])}</text>'
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="16" fill="{colours.get(s["status"], "#555")}">'
                    f'<title>{html.escape(s["name"])}: {s["status"]} {s["end"] - s["start"]:.1f}s</title></rect>'
                    f'<text x="{min(x + w + 4, width - 60):.1f}" y="{y + 13}" font-size="11">{s["end"] - s["start"]:.1f}s</text>')
    h = 16 + len(stages) * 22
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">{"".join(rows)}</svg>'


def _recent_runs(run_dir: Path, manifest: dict, limit: int = 10) -> list[dict]:
    """Earlier runs of the same series and mode in the same out folder, newest last."""
    same = []
    key = (manifest["inputs"].get("series"), manifest["inputs"].get("mode"), manifest["inputs"].get("tree"))
    for d in sorted(run_dir.parent.iterdir()):
        m = d / MANIFEST
        if not m.is_file():
            continue
        try:
            data = json.loads(m.read_text())
        except (ValueError, OSError):
            continue  # a broken sibling run must not break this run's report
        try:
            runfolder.check_manifest(m, data)
        except UsageError:
            continue
        inp = data.get("inputs", {})
        if (inp.get("series"), inp.get("mode"), inp.get("tree")) == key and data.get("stages"):
            st = data["stages"]
            same.append({"run_id": data["run_id"], "exit_code": data.get("exit_code"),
                         "seconds": round(max(s["end"] for s in st) - min(s["start"] for s in st), 1),
                         "config": d / ".config", "phases": _boot_phases(data)})
    return same[-limit:]


def _boot_phases(manifest: dict) -> list[dict]:
    """The boot's phases from a manifest; none when it has none or they are malformed."""
    boot = (manifest.get("outputs") or {}).get("boot") or {}
    try:
        return phasesmod.check_list(boot.get("phases", []), "manifest")
    except TypeError:
        return []


def phase_rows(ours: list[dict], previous: list[dict]) -> list[dict]:
    """One row per phase of this boot: when it ended, how long it took, and the previous run's figure."""
    before = {p["name"]: p for p in previous}
    rows = []
    for p in ours:
        prev = before.get(p["name"])
        rows.append({"name": p["name"], "end": p["end"], "seconds": p["seconds"],
                     "previous": prev["seconds"] if prev else None, "previous_end": prev["end"] if prev else None,
                     "change": round(p["seconds"] - prev["seconds"], 1) if prev else None})
    return rows


def _phases_svg(rows: list[dict], prev_total: float, width: int = 720) -> str:
    """Each phase a bar from the end of the one before to its own end (like the stages), and
    under it, thin and grey, the same phase of the previous run, on one scale."""
    if not rows:
        return ""
    total = max(max(r["end"] for r in rows), prev_total, 0.001)
    scale = (width - 250) / total
    out, start = [], 0.0
    for i, r in enumerate(rows):
        y = 8 + i * 26
        x, w = 130 + start * scale, max(2.0, r["seconds"] * scale)
        name = html.escape(r["name"])
        label = f'{r["seconds"]:.1f}s' + (f' (was {r["previous"]:.1f}s)' if r["previous"] is not None else "")
        out.append(f'<text x="4" y="{y + 12}" font-size="12">{name}</text>'
                   f'<rect class="phase" x="{x:.1f}" y="{y}" width="{w:.1f}" height="14" fill="#6a1b9a">'
                   f'<title>{name}: {r["seconds"]:.1f}s, ended at {r["end"]:.1f}s</title></rect>'
                   f'<text x="{min(x + w + 4, width - 110):.1f}" y="{y + 12}" font-size="11">{html.escape(label)}</text>')
        if r["previous"] is not None:
            prev_start = r["previous_end"] - r["previous"]
            out.append(f'<rect class="previous" x="{130 + prev_start * scale:.1f}" y="{y + 16}" '
                       f'width="{max(2.0, r["previous"] * scale):.1f}" height="5" fill="#9e9e9e"/>')
        start = r["end"]
    h = 16 + len(rows) * 26
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">{"".join(out)}</svg>'


def _config_diff(run_dir: Path, recent: list[dict]) -> list[str]:
    ours = run_dir / ".config"
    earlier = [r for r in recent if Path(r["config"]).exists() and Path(r["config"]).parent != run_dir]
    if not ours.exists() or not earlier:
        return []
    from kpatch_tool.kconfig import diff_configs

    rows = diff_configs(Path(earlier[-1]["config"]).read_text(), ours.read_text())
    return [f"{sym}: {a if a is not None else '(absent)'} -> {b if b is not None else '(absent)'}" for sym, a, b in rows]


def render_html(run_dir: Path, manifest: dict, rr: results.RunResults | None = None) -> str:
    rr = rr or merged_results(run_dir, manifest)
    recent = _recent_runs(run_dir, manifest)
    try:
        cfg_diff = _config_diff(run_dir, recent)
    except Exception:  # a report must render even when the config diff cannot
        cfg_diff = []
    env = templating.env(lenient=True)
    logs = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*.log"))
    max_recent = max([r["seconds"] for r in recent] + [0.001])
    ours = rr.phases or _boot_phases(manifest)
    # Run ids start with their time: the previous run is the newest one before this one.
    earlier = [r for r in recent if r["run_id"] < manifest["run_id"] and r["phases"]]
    previous = earlier[-1] if earlier else None
    rows = phase_rows(ours, previous["phases"] if previous else [])
    prev_total = max([p["end"] for p in previous["phases"]] if previous else [0.0])
    return env.get_template("report.html.j2").render(
        m=manifest, rr=rr, counts=rr.counts(), timeline=markupsafe.Markup(_timeline_svg(manifest.get("stages", []))),
        recent=recent, max_recent=max_recent, logs=[str(p) for p in logs], config_diff=cfg_diff,
        phase_rows=rows, phase_previous=previous["run_id"] if previous else None,
        phase_timeline=markupsafe.Markup(_phases_svg(rows, prev_total)))
