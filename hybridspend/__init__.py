"""hybridspend: live hybrid GPU spend, on-prem against cloud.

Everything installs under this one name: ``hybridspend.collectors``, ``hybridspend.streams``,
``hybridspend.storage``, ``hybridspend.alerts``, ``hybridspend.dashboards`` and the layers beneath them
(``contracts``, ``costmodel``, ``infra``, ``reports``).  In the wheel they are folders of this
package (pyproject.toml maps them); in the source tree they stay at the top of the repository,
beside this folder, and are found there.
"""

from pathlib import Path as _Path

_source_tree = _Path(__file__).resolve().parents[1]
if (_source_tree / "pyproject.toml").is_file() and (_source_tree / "streams" / "topology.py").is_file():
    __path__.append(str(_source_tree))  # type: ignore[name-defined]  # noqa: F821
