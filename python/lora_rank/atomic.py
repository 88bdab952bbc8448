"""Write a file atomically: into a temporary file next to it, then ``os.replace``.

A reader never sees a half-written file, and a failed write leaves the old file (if any)
untouched and no temporary file behind.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_atomic(d / "a.json", '{"r": 8}')
    >>> (d / "a.json").read_text()
    '{"r": 8}'
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Union


def write_atomic(path: Union[str, os.PathLike[str]], data: Union[str, bytes]) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically.

    The temporary file is created in the destination directory with the process umask
    applied (so the result has ordinary permissions), flushed to disk, then renamed over
    ``path``. The directory must exist.

    Example:
        >>> write_atomic("/tmp/lora-rank-doctest.txt", "hello")
        >>> open("/tmp/lora-rank-doctest.txt").read()
        'hello'
    """
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
