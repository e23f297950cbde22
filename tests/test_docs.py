"""The documentation: the README is a front page, the site builds strictly, every command in its table
has --help, and the configuration reference is what the models say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hybridspend.cli import COMMANDS, build_parser
from hybridspend.contracts.config_reference import reference_markdown, rows

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _table_commands() -> list[list[str]]:
    """The words of each command in the README's commands table (`hybridspend collect dcgm ...` -> collect dcgm)."""
    found = []
    for cell in re.findall(r"^\| `hybridspend ([^`]+)`", README, re.M):
        found.append([w for w in cell.split() if re.fullmatch(r"[a-z][a-z-]*", w)][:2])
    return found


def test_the_readme_is_a_front_page():
    assert len(README.splitlines()) <= 200
    for heading in ("## Quick start", "## Commands", "## Where to read on"):
        assert heading in README
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), link


def test_every_command_in_the_table_has_help_and_every_command_is_in_the_table(capsys):
    table = _table_commands()
    parser = build_parser()
    for words in table:
        spec = next((c for c in COMMANDS if list(c.words) == words[:len(c.words)]), None)
        assert spec is not None, f"the README lists `hybridspend {' '.join(words)}`, which is no command"
        with pytest.raises(SystemExit) as exited:
            parser.parse_args([*spec.words, "--help"])
        assert exited.value.code == 0
        assert "usage: hybridspend " + " ".join(spec.words) in capsys.readouterr().out
    listed = {tuple(w[:len(c.words)]) for w in table for c in COMMANDS}
    missing = [" ".join(c.words) for c in COMMANDS if c.words not in listed]
    assert missing == [], f"commands missing from the README's table: {missing}"


def test_the_configuration_reference_is_generated_from_the_models_and_lists_every_field():
    page = (ROOT / "docs" / "configuration-reference.md").read_text()
    assert page == reference_markdown(), "run `hybridspend config reference > docs/configuration-reference.md`"
    paths = [path for path, *_ in rows()]
    assert len(paths) > 100 and "thresholds.evidence_hours.commit_in_cloud" in paths
    for path in paths:
        assert f"| `{path}` |" in page


def test_the_documentation_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "cost-model" / "index.html").is_file()
    assert (tmp_path / "site" / "decisions" / "0003-the-tail-stall-of-a-restarted-worker" / "index.html").is_file()
