"""Writing the files a user names (reports, exports, state): never through a symbolic link.

A report path or ``<state dir>/config.yaml`` that is a symlink would otherwise be followed and its
target overwritten.  ``write_replacing`` writes a new file beside the path and renames it over the
path: a link there is replaced by the file, its target untouched, and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def write_replacing(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` by renaming a new file over it, durably; returns
    the path.  A file replaced keeps its permissions; a new one gets the umask's."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode) if not path.is_symlink() else None
    except FileNotFoundError:
        mode = None
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
