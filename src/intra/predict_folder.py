"""The output folder of `intra predict`: one process at a time, names that never collide, records never torn.

Layout (see `predict`): predictions.jsonl (one record per image), predict.json (the manifest),
anomaly_maps/, overlays/ and masks/ (one PNG per image each), and the hidden lock `.predict.lock`.

- **Lock.** `PredictFolder.open` takes an exclusive `flock` on `.predict.lock` and writes its pid
  there; a second process is refused, naming that pid. The kernel drops the lock when the process
  dies, so a killed run never leaves the folder locked.
- **Orphans.** Temporary files (`.*.tmp`) that a killed process left are deleted once the lock is held.
- **Names.** Every output name keeps the input's suffix (`x.png` -> `x_png.png`, `x.jpg` ->
  `x_jpg.png`) and mirrors the inputs' folders below their common folder; a name already used
  for another input, in this run or an earlier one in the same folder (also when they differ only
  in case), gets an index (`x_png-2.png`). The manifest's `outputs` maps each name to its input,
  and is written before any of those files, so a rerun with other inputs never reuses a name.
- **Records.** Each record is appended with one `write` call; a failed or short write (a full disk)
  is cut back, so the last line is never torn, and the error is reported once, as the first cause.
  Reopening drops a cut last line and the records of unreadable images (`"error"`), which are
  retried; every other recorded image is skipped (resume).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import IntraError
from .files import atomic_write, remove_orphans, write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder is not protected against a second process
    fcntl = None

RECORDS = "predictions.jsonl"
MANIFEST = "predict.json"
LOCK = ".predict.lock"
OUTPUTS = "outputs"  # manifest key: {output name: input path}
PICTURE_FOLDERS = ("anomaly_maps", "overlays", "masks")  # where predict writes one PNG per image


def dumps(record: dict) -> str:
    """One JSON line; a path that is not valid UTF-8 (a surrogate-escaped name) is written \\u-escaped."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line


def output_names(paths: list[Path], taken: dict[str, str] | None = None) -> list[str]:
    """Output file names (PNG) for paths: below their common folder, suffix kept, never two alike.

    taken: {name: input path} already used in the folder; a path found there keeps its name, and
    no other path gets one of those names (compared without case, for case-insensitive disks).
    """
    if not paths:
        return []
    taken = dict(taken or {})
    known = {path: name for name, path in taken.items()}
    used = {name.casefold(): path for name, path in taken.items()}
    root = Path(os.path.commonpath([p.parent for p in paths]))
    names = []
    for path in paths:
        name = known.get(str(path))
        if name is None:
            stem = _printable(path.relative_to(root).with_suffix("").as_posix())
            suffix = _printable(path.suffix.lstrip("."))
            name, index = f"{stem}_{suffix}.png", 1
            while used.get(name.casefold(), str(path)) != str(path):
                index += 1
                name = f"{stem}_{suffix}-{index}.png"
        used[name.casefold()] = str(path)
        names.append(name)
    return names


def _printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate escapes) -> '_' for those bytes: output names stay UTF-8."""
    return "".join("_" if "\udc80" <= ch <= "\udcff" else ch for ch in text)


def check_not_nested(out_dir: Path, inputs: list[str | Path], paths: list[Path]) -> None:
    """Refuse an output folder that is, or lies inside, an input folder, and inputs that lie inside it.

    Either way a rerun would read the previous outputs as inputs, and names could overwrite the
    user's own files (a `masks/` folder among the inputs).
    """
    out = Path(out_dir).resolve()
    for item in inputs:
        root, recursive = _input_folder(str(item))
        if root is not None and (out == root or (recursive and root in out.parents)):
            raise IntraError(
                f"--out {out_dir} lies inside the input folder {item}: choose an output folder outside the inputs"
            )
    for path in paths:
        if out in path.parents:
            raise IntraError(f"input {path} lies inside --out {out_dir}: choose an output folder apart from the inputs")


def _input_folder(item: str) -> tuple[Path | None, bool]:
    """(the folder an input searches, whether it searches its subfolders too): a folder searches all
    of itself; a glob pattern its fixed part, recursively only with **."""
    if Path(item).is_dir():
        return Path(item).resolve(), True
    if any(ch in item for ch in "*?["):
        parts = Path(item).parts
        fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
        return (Path(*parts[:fixed]).resolve() if fixed else Path.cwd()), "**" in item
    return None, False


class PredictFolder:
    """An output folder opened by this process (see the module doc); close() releases it."""

    def __init__(self, path: Path, lock_fd: int | None, done: set[str], names: dict[str, str]):
        self.path = path
        self.done = done  # input paths recorded without error: skipped
        self.names = names  # input path -> output name (PNG), for this run's inputs
        self._lock_fd = lock_fd
        self._records_fd: int | None = None

    @classmethod
    def open(cls, out_dir: str | Path, settings: dict[str, Any], paths: list[Path]) -> PredictFolder:
        """Lock, clean, check and reopen out_dir for predicting `paths` with `settings` (run, thresholds).

        A folder holding predictions made with other settings is refused rather than mixed.
        """
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IntraError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
        lock_fd = _lock(out_dir)
        try:
            remove_orphans(out_dir, PICTURE_FOLDERS)  # only intra's own: --out may hold other files
            manifest = _read_manifest(out_dir)
            outputs = dict(manifest.pop(OUTPUTS, {})) if manifest else {}
            if manifest is not None and manifest != settings:
                raise IntraError(
                    f"{out_dir} holds predictions made with another run or thresholds "
                    f"({out_dir / MANIFEST}): choose another --out"
                )
            done, recorded = _reopen_records(out_dir / RECORDS)
            for path, name in recorded.items():  # folders written before the manifest listed its outputs
                outputs.setdefault(name, path)
            names = dict(zip(map(str, paths), output_names(paths, outputs)))
            outputs.update({name: path for path, name in names.items()})
            write_json(out_dir / MANIFEST, {**settings, OUTPUTS: outputs})  # names reserved before any file
        except BaseException:
            _unlock(lock_fd)
            raise
        return cls(out_dir, lock_fd, done, names)

    def append(self, record: dict) -> None:
        """Append one record to predictions.jsonl, whole or not at all."""
        path = self.path / RECORDS
        line = (dumps(record) + "\n").encode("utf-8")
        try:
            if self._records_fd is None:
                self._records_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            size = os.fstat(self._records_fd).st_size
        except OSError as exc:
            raise IntraError(f"cannot write {path}: {exc.strerror or exc}") from None
        try:
            if os.write(self._records_fd, line) != len(line):
                raise OSError(28, os.strerror(28))  # a short write: the disk is full
        except OSError as exc:
            try:
                os.ftruncate(self._records_fd, size)  # never leave a torn last line
            except OSError:
                pass
            raise IntraError(f"cannot write {path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._records_fd is not None:
            try:
                os.close(self._records_fd)
            except OSError:
                pass  # nothing is buffered: every record was written whole or cut back
            self._records_fd = None
        _unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> PredictFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lock(out_dir: Path) -> int | None:
    if fcntl is None:
        return None
    path = out_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise IntraError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise IntraError(
            f"{out_dir} is in use by another intra predict (pid {owner}): wait for it to end, or choose another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    except OSError:
        pass  # the lock holds all the same; only the pid in the message of a second process is missing
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)  # closing the file releases the flock
        except OSError:
            pass


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        raise IntraError(f"{path} is damaged: choose another --out (or delete {out_dir})")
    return manifest


def _reopen_records(records: Path) -> tuple[set[str], dict[str, str]]:
    """(paths done, {path: output name} of the records with files) of predictions.jsonl, rewritten
    without a cut last line and without the records of unreadable images (they are retried)."""
    if not records.is_file():
        return set(), {}
    try:
        lines = records.read_bytes().decode("utf-8", "surrogateescape").split("\n")
    except OSError as exc:
        raise IntraError(f"cannot read {records}: {exc.strerror or exc}") from None
    done, names, kept = set(), {}, []
    for line in lines:
        try:
            record = json.loads(line)
            path = record["path"]
        except (ValueError, KeyError, TypeError):
            break  # the cut line (or the empty string after the last newline)
        if "error" in record:
            continue
        done.add(path)
        if isinstance(record.get("anomaly_map"), str):
            names[path] = record["anomaly_map"].partition("/")[2]
        kept.append(line)
    if len(kept) != len(lines) - 1 or lines[-1]:
        text = "".join(line + "\n" for line in kept)
        atomic_write(records, lambda tmp: tmp.write_bytes(text.encode("utf-8", "surrogateescape")))
    return done, names
