"""Writing a file so that a reader sees the old version or the new one, never a part."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class FileWriteError(OSError):
    """A file could not be written; the message names the file and the reason. Nothing was left there."""

    def __init__(self, path: Path, error: OSError, doing: str = "") -> None:
        super().__init__(f"cannot write {path}: {doing}{error.strerror or error}")
        self.errno, self.filename = error.errno, str(path)

    def __str__(self) -> str:
        return str(self.args[0])  # OSError's own adds "[Errno N]" and the file again


def make_folder(path: Path) -> None:
    """Create the folder `path` will be written into (and its parents); FileWriteError names `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileWriteError(path, e, "cannot create its folder: ") from e


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary file in `path`'s folder (created with its parents) for the caller to fill; when the
    block ends it is swapped in by `os.replace`, or, when the block raises, removed, so `path` is either
    its old self or the whole new file. The file gets the mode the umask gives a new file, not
    mkstemp's private 0600: tables and warm entries are read by whoever serves. Any OSError on the way
    is raised as a FileWriteError naming `path`."""
    make_folder(path)
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise FileWriteError(path, e) from e
    os.close(fd)
    temp = Path(temp_name)
    try:
        yield temp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, path)
    except OSError as e:
        temp.unlink(missing_ok=True)
        raise FileWriteError(path, e) from e
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through `replaced_atomically`, flushed to disk before the swap."""
    with replaced_atomically(path) as temp, open(temp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
