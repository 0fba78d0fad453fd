"""Writing files safely: every file intra writes goes through `atomic_write` (temporary file, then rename).

A crash, a full disk or a read-only folder never leaves half a file behind: the temporary file is
removed and an existing file at the destination is left as it was. Failures become an IntraError
naming the file. A process killed during a write (kill -9) leaves its hidden temporary file
`.<name>.<random>.tmp`; `remove_orphans` deletes those at the next run. `replacing_folder` builds
a new folder beside an old one and swaps it in only once it is complete.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from .errors import IntraError

log = logging.getLogger(__name__)


@functools.cache
def _umask() -> int:
    """The process's umask, read on first use (reading it means setting it: it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), flush it to the disk, then rename tmp_path to path (same folder, so the
    rename is atomic).

    Without the flush a power cut soon after the rename can leave `path` empty on file systems that
    write data later than names. Any OS failure (no space, no permission) becomes an IntraError
    naming the file; the temporary file is removed, and an existing file at `path` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise IntraError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        _flush_to_disk(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:  # a full disk, a read-only folder...
        Path(tmp).unlink(missing_ok=True)
        raise IntraError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _flush_to_disk(path: Path) -> None:
    """fsync a written file, so that its data is on the disk before a rename gives it its name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_orphans(folder: Path, subfolders: tuple[str, ...] = ()) -> int:
    """Delete the temporary files (`.*.tmp`) that interrupted atomic writes left in folder and in its
    named subfolders (not below them: a folder may hold other programs' runs and their writes in flight).

    Call it only while no other process writes there (predict holds its folder's lock). Returns the count.
    """
    removed = 0
    for place in (Path(folder), *(Path(folder) / name for name in subfolders)):
        for path in place.glob(".*.tmp"):
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed += 1
            except OSError:
                pass  # not ours to worry about: the next write reports a real problem by name
    return removed


@contextmanager
def replacing_folder(
    folder: Path, adopt: Path | None = None, keep: Callable[[Path], str | None] | None = None
) -> Iterator[Path]:
    """A new temporary sibling of `folder` to fill; on success it replaces folder, on failure it is removed.

    The swap is two renames on one file system (folder -> a hidden old name, new -> folder), then the
    old folder is deleted: nothing is lost if the process dies at any point (the old content is
    complete until the new one is), and readers see either the old or the new folder, never a mix.
    `adopt`: an earlier call's sibling whose process died (`stale_stagings`), filled on instead of a
    new one. `keep(staging)`: on failure, a message when the half-filled sibling is worth keeping
    (an interrupted training that `--resume` continues); it is then left in place and the message logged.
    """
    folder = Path(folder)
    try:
        if adopt is None:
            _remove_stale_siblings(folder)
            staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-{os.getpid()}-", dir=folder.parent))
            os.chmod(staging, 0o777 & ~_umask())
        else:  # renamed to this process's pid: while it lives, no other call takes the folder for stale
            staging = adopt.with_name(f".{folder.name}.new-{os.getpid()}-{adopt.name.rsplit('-', 1)[-1]}")
            os.replace(adopt, staging)
    except OSError as exc:
        raise IntraError(f"cannot write next to {folder}: {exc.strerror or exc}") from None
    try:
        yield staging
    except BaseException:
        message = keep(staging) if keep is not None else None
        if message:
            log.warning("%s", message)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    old = staging.with_name(staging.name.replace(".new-", ".old-", 1))
    try:
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
    except OSError as exc:
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise IntraError(f"cannot replace {folder}: {exc.strerror or exc} (the new one is in {staging})") from None
    shutil.rmtree(old, ignore_errors=True)


def stale_stagings(folder: Path, kind: str = "new") -> list[Path]:
    """The .<name>.<kind>-<pid>-* siblings that replacing_folder calls left when their process died, newest first."""
    found = []
    for sibling in Path(folder).parent.glob(f".{glob.escape(Path(folder).name)}.{kind}-*-*"):
        pid = sibling.name[len(Path(folder).name) + len(kind) + 3 :].partition("-")[0]
        if pid.isdigit() and sibling.is_dir() and not _alive(int(pid)):
            found.append(sibling)
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def _remove_stale_siblings(folder: Path) -> None:
    """Delete the .<name>.new-<pid>-* and .<name>.old-<pid>-* folders of replacing_folder calls whose process died."""
    for sibling in [*stale_stagings(folder, "new"), *stale_stagings(folder, "old")]:
        shutil.rmtree(sibling, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
