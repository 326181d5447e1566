"""The HTML report, opened in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from kpatch_tool import pipeline, report


def _png_pixels(path: Path, max_rows: int = 400) -> tuple[int, int, list[bytes]]:
    """Decode the top rows of an 8-bit RGB/RGBA non-interlaced PNG (what chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompressobj().decompress(idat, (max_rows + 1) * (width * bpp + 1))
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(min(height, max_rows)):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def test_report_renders_in_a_real_browser_with_the_red_verdict(tmp_ws, make_repo, tmp_path):
    repo = make_repo("lin", {"Makefile": "all:\n"})
    ws = tmp_ws(f'[trees.linux]\nsource = "{repo}"\n')
    res = pipeline.run_ci(ws, None, mode="guest", onto={"linux": "no-such-ref"})
    html = res.run_dir / report.REPORT_HTML
    assert "http" not in html.read_text().split("<body>")[0], "the page must not load anything from the network"
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is a test prerequisite (kpatch_tool/data/packages.txt)"
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,700",
                    f"--screenshot={shot}", html.as_uri()], check=True, capture_output=True, timeout=120)
    width, bpp, rows = _png_pixels(shot)
    assert width == 900
    # The verdict badge (#c62828, "exit 2") is drawn near the top of the page.
    red = sum(1 for row in rows[:120] for i in range(0, len(row), bpp)
              if abs(row[i] - 0xC6) < 12 and abs(row[i + 1] - 0x28) < 12 and abs(row[i + 2] - 0x28) < 12)
    assert red > 200, f"no red verdict badge in the screenshot ({red} red pixels)"
    ink = sum(1 for row in rows[120:400] for i in range(0, len(row), bpp) if row[i] < 100)
    assert ink > 500, "the stage table and timeline should put text on the page"


def _run_folder(out: Path, run_id: str, phase_seconds: list[float], with_results: bool = True) -> Path:
    """A finished xen+domU run folder with boot phases, as pipeline and boot write it."""
    import json

    from kpatch_tool import results

    names = ["firmware", "xen", "dom0-kernel", "initramfs", "toolstack", "power-off"]
    phases, end = [], 0.0
    for name, s in zip(names, phase_seconds):
        end += s
        phases.append({"name": name, "end": end, "seconds": s, "guest_clock": None, "line": ""})
    d = out / run_id
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({
        "run_id": run_id, "tool": {"version": "0"}, "host": {"node": "h", "cpus": 2}, "exit_code": 0,
        "inputs": {"series": "s1", "mode": "xen+domU", "tree": "linux", "profile": "xen-dom0"},
        "stages": [{"name": "boot", "status": "ok", "start": 0.0, "end": end, "note": ""}],
        "outputs": {"boot": {"verdict": "pass", "phases": phases}}}))
    if with_results:
        results.write_json(d / results.RESULTS_JSON, results.RunResults(mode="xen+domU", verdict="pass",
                                                                         duration=end, phases=phases))
    return d


def test_phase_rows_compare_each_phase_with_the_previous_run(tmp_path):
    old = _run_folder(tmp_path, "20260101-000000-s1", [2, 20, 5, 6, 30, 2])
    new = _run_folder(tmp_path, "20260101-000100-s1", [2, 10, 5, 1, 30, 2])
    page = report.render_html(new, report.load_manifest(new))
    assert f"<code>{old.name}</code>" in page
    rows = report.phase_rows([{"name": "xen", "end": 12, "seconds": 10}], [{"name": "xen", "end": 22, "seconds": 20}])
    assert rows == [{"name": "xen", "end": 12, "seconds": 10, "previous": 20, "previous_end": 22, "change": -10}]
    assert "-10.0s" in page and "(was 20.0s)" in page
    # The first run of a series has nothing to compare with: no grey bars, no "was".
    first = report.render_html(old, report.load_manifest(old))
    assert 'class="phase"' in first and 'class="previous"' not in first and "was" not in first


def test_report_phase_timeline_renders_in_a_real_browser(tmp_path):
    """The boot phases drawn as bars (purple) with the previous run's under them (grey), one
    row per phase, each as long as its phase: the 20 s Xen phase is twice the 10 s one."""
    _run_folder(tmp_path, "20260101-000000-s1", [2, 20, 5, 6, 30, 2])
    new = _run_folder(tmp_path, "20260101-000100-s1", [2, 10, 5, 1, 30, 2])
    report.write_all(new)
    html = new / report.REPORT_HTML
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is a test prerequisite (kpatch_tool/data/packages.txt)"
    shot = tmp_path / "phases.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,1400",
                    f"--screenshot={shot}", html.as_uri() + "#phases"], check=True, capture_output=True, timeout=120)
    width, bpp, rows = _png_pixels(shot, max_rows=1400)

    def runs(rgb):  # per screen row: how many pixels have that colour
        return [sum(1 for i in range(0, len(row), bpp)
                    if all(abs(row[i + k] - rgb[k]) < 10 for k in range(3))) for row in rows]

    purple, grey = runs((0x6A, 0x1B, 0x9A)), runs((0x9E, 0x9E, 0x9E))
    bands: list[int] = []  # the width of each purple bar, top to bottom
    for y, n in enumerate(purple):
        if n and (y == 0 or not purple[y - 1]):
            bands.append(n)
    assert len(bands) == 6, f"one bar per phase, got {bands}"
    xen, old_xen = bands[1], max(grey[y] for y in range(len(grey)))
    assert abs(bands[4] / xen - 3.0) < 0.15, bands  # toolstack 30 s against xen 10 s
    assert old_xen >= 1.9 * xen, "the previous run's 20 s Xen phase is drawn, grey, twice as long"
