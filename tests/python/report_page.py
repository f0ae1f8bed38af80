"""The routing report page (`report.html`) in headless Chromium: every figure drawn, no console
error. Used by test_routes.py on the tiny fixture's report, and on any report as a script:

    python tests/python/report_page.py REPORT_DIR [SCREENSHOT.png]
"""

import base64
import pathlib
import sys

import browser

FIGURES = ["shares", "coactivation", "per_layer", "load_series"]


def check(report_dir, screenshot=None):
    """Opens `report_dir`/report.html; asserts every figure is drawn (an SVG over 300x200 with
    marks in it) and that the page logged no error; returns (id, width, height, marks) a
    figure."""
    b = browser.Browser()
    try:
        b.open((pathlib.Path(report_dir) / "report.html").resolve().as_uri())
        sizes = b.eval("""[...document.querySelectorAll('figure')].map(f => {
            const s = f.querySelector('svg').getBoundingClientRect();
            return [f.id, Math.round(s.width), Math.round(s.height),
                    f.querySelectorAll('svg rect, svg path, svg polyline').length];
        })""")
        assert [s[0] for s in sizes] == FIGURES, sizes
        for name, w, h, marks in sizes:
            assert w > 300 and h > 200 and marks > 5, (name, w, h, marks)
        assert b.errors() == []
        if screenshot:
            shot = b.call("Page.captureScreenshot", captureBeyondViewport=True)
            pathlib.Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        return sizes
    finally:
        b.close()


if __name__ == "__main__":
    for row in check(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None):
        print(*row)
    print("report page: every figure drawn, no console error")
