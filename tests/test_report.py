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
