"""Files that hold secrets: private (mode 600) from the moment they exist, never after the fact.

Writing first and `chmod`-ing afterwards leaves a window in which the file has the umask's mode
(often 644) with the secret already in it; another local account can open it then and keep reading
through its descriptor. Here the file is created by `os.open` with `O_CREAT | O_EXCL` and mode 0o600,
so nobody but its owner ever holds it open, and a replacement is written to a fresh private file
that is renamed over the old one.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_MODE = 0o600


def create_private(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist yet) with mode 600 and write `data` into it.

    Raises FileExistsError when it exists: the caller decides whether to read it instead.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_MODE)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def write_private(path: Path, data: bytes | str, *, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` atomically with a mode-600 file holding `data`, owned by `owner` (uid, gid) if given.

    A reader sees the old content or the new, never a half-written file; the temporary file is
    private and (when `owner` is given) handed to its owner before the first byte is written.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as out:
            if owner is not None:
                os.fchown(out.fileno(), *owner)
            out.write(raw)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_private(path: Path) -> bytes:
    """The content of a secret file, refused (PermissionError) when its group or others may read it."""
    with open(path, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {mode & 0o777:o}): chmod 600 it")
        return handle.read()
