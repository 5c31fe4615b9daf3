"""Writing a file so that readers see the old content or the new, never half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: str | Path, content: bytes | str) -> Path:
    """Write ``content`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash or a full disk leaves the previous file (or none) and no temporary file behind.
    The parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as scratch:
        try:
            scratch.write(data)
            scratch.flush()  # a full disk shows here, not later in close(), so the scratch file goes too
        except BaseException:
            scratch.close()
            os.unlink(scratch.name)
            raise
    try:
        os.replace(scratch.name, path)
    except BaseException:
        os.unlink(scratch.name)
        raise
    return path
