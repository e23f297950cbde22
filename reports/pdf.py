"""The report's HTML laid out as a PDF by WeasyPrint, with the fonts the project's dependencies ship.

``python -m reports.pdf OUT.pdf`` reads the HTML on standard input and writes the PDF: `monthly.write`
runs it as a second process, so laying out the pages (the slowest step, on one core) overlaps with
writing the other formats.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hybridspend.contracts.files import write_replacing

from hybridspend.reports import fonts


def pdf_from_html(html_text: str) -> bytes:
    from weasyprint import CSS, HTML
    from weasyprint.text.fonts import FontConfiguration

    font_config = FontConfiguration()
    faces = CSS(string=fonts.font_face_css(), font_config=font_config)
    return HTML(string=html_text).write_pdf(stylesheets=[faces], font_config=font_config)


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
    import weasyprint  # noqa: F401  (loaded before the HTML arrives)

    html_text = sys.stdin.buffer.read().decode()
    write_replacing(argv[0], pdf_from_html(html_text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
