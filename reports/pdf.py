"""The report's HTML laid out as a PDF by WeasyPrint, with the fonts the project's dependencies ship.

``python -m reports.pdf OUT.pdf`` reads the HTML on standard input and writes the PDF: `monthly.write`
runs it as a second process, so laying out the pages (the slowest step, on one core) overlaps with
writing the other formats.
"""

from __future__ import annotations

import base64
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

from hybridspend.contracts.files import write_replacing

from hybridspend.reports import fonts


# a chart drawn inline in the HTML (charts._svg: one <svg> document each, never nested; a label in it is escaped)
_INLINE_CHART = re.compile(r"<svg\b.*?</svg>", re.S)
CHART_CSS = "img.chart { display: block; width: 100%; height: auto; }"  # as the template sizes `figure svg`


def charts_as_images(html_text: str) -> str:
    """The HTML with each inline chart as an ``<img>`` of the same SVG document.  WeasyPrint draws an SVG
    image as it draws an inline one (a month's report came out byte for byte the same PDF), but an inline
    ``<svg>`` is part of the HTML: it computed the CSS style and built a box of each of the charts'
    thousands of elements, 40 % of the time it took to lay out the report's pages."""
    def image(chart: re.Match) -> str:
        return f'<img class="chart" src="data:image/svg+xml;base64,{base64.b64encode(chart[0].encode()).decode()}">'

    return _INLINE_CHART.sub(image, html_text)


def pdf_from_html(html_text: str) -> bytes:
    from weasyprint import CSS, HTML
    from weasyprint.text.fonts import FontConfiguration

    font_config = FontConfiguration()
    css = CSS(string=f"{fonts.font_face_css()}\n{CHART_CSS}", font_config=font_config)
    return HTML(string=charts_as_images(html_text)).write_pdf(stylesheets=[css], font_config=font_config)


class PdfJob:
    """A PDF being laid out by a second process: start it early (it loads WeasyPrint while the HTML is
    rendered), `send` the HTML, then `wait`."""

    def __init__(self, path: Path) -> None:
        # the child imports from where this process does (a source tree or an install)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.path = path
        self.process = subprocess.Popen([sys.executable, "-m", "hybridspend.reports.pdf", str(path)], stdin=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env)

    def send(self, html_text: str) -> None:
        try:
            self.process.stdin.write(html_text.encode())
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # the process ended early: `wait` reports why

    def wait(self) -> Path:
        stderr = self.process.stderr.read().decode(errors="replace")
        if self.process.wait() != 0:
            raise RuntimeError(f"writing {self.path} failed: {stderr.strip()[-2000:]}")
        return self.path

    def cancel(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m reports.pdf OUT.pdf  (the report's HTML on standard input)", file=sys.stderr)
        return 2
    importlib.import_module("weasyprint")  # loaded before the HTML arrives

    html_text = sys.stdin.buffer.read().decode()
    write_replacing(argv[0], pdf_from_html(html_text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
