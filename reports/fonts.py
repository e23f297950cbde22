"""The fonts the report draws with, all shipped by the project's own dependencies.

DejaVu Sans (shipped by matplotlib) covers Latin, Greek, Cyrillic and most symbols; Kurinto Sans SC
(shipped by weblate-fonts, OFL) covers CJK ideographs and kana, so a workload named ``研究-团队`` keeps
every character in the PDF and in the charts.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import matplotlib
import weblate_fonts

SANS = "DejaVu Sans"
CJK = "Kurinto Sans SC"
FAMILIES = (SANS, CJK)


def _dejavu(name: str) -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def _kurinto(name: str) -> Path:
    return Path(weblate_fonts.__file__).parent / "static" / "weblate_fonts" / "kurinto" / "ttf" / name


def faces() -> list[tuple[str, str, Path]]:
    """(family, weight, file) of every face the report uses."""
    return [(SANS, "normal", _dejavu("DejaVuSans.ttf")), (SANS, "bold", _dejavu("DejaVuSans-Bold.ttf")),
            (CJK, "normal", _kurinto("KurintoSansSC-Rg.ttf")), (CJK, "bold", _kurinto("KurintoSansSC-Bd.ttf"))]


def font_face_css() -> str:
    """@font-face rules pointing at the font files (given to the PDF renderer, not written into the HTML)."""
    return "\n".join(f'@font-face {{ font-family: "{family}"; font-weight: {weight}; src: url("{path.as_uri()}"); }}'
                     for family, weight, path in faces())


@cache
def register_with_matplotlib() -> None:
    """Make the CJK face available to matplotlib as a fallback after DejaVu Sans."""
    from matplotlib import font_manager

    for family, _, path in faces():
        if family == CJK:
            font_manager.fontManager.addfont(str(path))
