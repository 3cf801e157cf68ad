"""Safe file writes: atomic replacement, free-space and writability checks, and the temporary files a killed
process leaves behind. Every writer of the package (checkpoints, run folders, caches, submissions, converted
weights, --json outputs) goes through these, so a kill or a full disk never leaves half a file."""
from __future__ import annotations

import errno
import os
import shutil
import threading
import tempfile
from pathlib import Path

from skinseg.errors import DataError, DiskFullError, EnvironmentProblem

SPARE_BYTES = 2**20  # left free after any write, so the disk is never filled to the last byte


def temp_sibling(path: Path, tag: str = "", per_thread: bool = False) -> Path:
    """``.<name><tag>.tmp-<pid>`` beside ``path``: where a write goes before it replaces ``path`` (the one temporary
    name of every writer, so :func:`remove_dead_temp_files` finds a killed one's). ``per_thread`` adds the thread
    (``.<name><tag>-t<thread>.tmp-<pid>``) for writers that threads of one process may run at once."""
    thread = f"-t{threading.get_native_id()}" if per_thread else ""
    return path.with_name(f".{path.name}{tag}{thread}.tmp-{os.getpid()}")


def is_disk_full(e: OSError) -> bool:
    return isinstance(e, DiskFullError) or e.errno in (errno.ENOSPC, errno.EDQUOT)


def space_message(folder, needed: int | None = None) -> str:
    """'N MB free in DIR' (and how much is needed), for disk-full messages."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return f"in {folder}"
    need = f", {needed / 2**20:.0f} MB needed" if needed else ""
    return f"{free / 2**20:.0f} MB free in {folder}{need}"


def ensure_space(folder, nbytes: int, what: str, hint: str) -> None:
    """DiskFullError ("<what>: N MB free in DIR, M MB needed. <hint>") when ``nbytes`` would not fit."""
    if shutil.disk_usage(folder).free < nbytes + SPARE_BYTES:
        raise DiskFullError(f"{what}: {space_message(folder, nbytes + SPARE_BYTES)}. {hint}")


def ensure_writable(folder, what: str, hint: str = "") -> None:
    """Create ``folder`` if needed and prove it writable with a probe file; EnvironmentProblem otherwise.

    A probe rather than ``os.access``: root passes ``os.access`` on a read-only mount.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".skinseg-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise EnvironmentProblem(f"{what} {folder} is not writable ({reason}){'; ' + hint if hint else ''}") from None


def write_atomic(path: str | Path, data: str | bytes | memoryview, fsync: bool = False) -> None:
    """Replace ``path`` by ``data`` so that a kill leaves the old file or the new one, never half of either.

    A full disk raises OSError (ENOSPC) with the old file in place; callers turn it into their message.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "w" if isinstance(data, str) else "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_dead_temp_files(folder: Path) -> None:
    """Delete the ``.*.tmp-<pid>`` files and folders in ``folder`` whose process no longer runs (a kill during a
    write); those of running processes, this one included, are left alone."""
    for p in folder.glob(".*.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- folders a command owns ------------------------------------------------------------------------
def check_replaceable(folder: str | Path, marker: str, what: str, hint: str) -> Path:
    """``folder`` resolved, when a command whose folders hold ``marker`` may write it: it does not exist, is
    empty, or holds the marker. DataError ("<what> <folder> ... <hint>") otherwise: a file, or a folder of
    someone else's."""
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{what} {folder} is a file, not a folder; {hint}")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / marker).is_file():
        raise DataError(f"{what} {folder} holds files that skinseg did not write there (no {marker} marker), so it "
                        f"is left alone; {hint}")
    return folder


def write_marker(folder: Path, marker: str, text: str) -> None:
    """Mark ``folder`` as made by skinseg, so the same command may replace it later."""
    (Path(folder) / marker).write_text(text.rstrip("\n") + "\n")


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` at ``final`` in two renames, the old ``final`` (which the caller checked
    with :func:`check_replaceable`) removed after: a kill leaves the old folder or the new one in place."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = temp_sibling(final, ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def os_error(e: OSError, what: str, folder, hint: str) -> EnvironmentProblem:
    """The one-line user error for an OSError while writing: DiskFullError for a full disk, EnvironmentProblem
    (read-only, permission) otherwise; ``what`` names the file, ``hint`` says what to do."""
    if is_disk_full(e):
        return DiskFullError(f"disk full while writing {what} ({space_message(folder)}); {hint}")
    return EnvironmentProblem(f"could not write {what}: {e.strerror or type(e).__name__}; {hint}")


def claim_folder(folder: str | Path, marker: str, what: str, own: Path | None = None) -> Path:
    """``folder`` resolved and created, when a command may write its files there: below ``own`` (a folder of the
    project's generated output, such as reports/), new, empty, or marked by an earlier run of the command
    (``marker``, written here); DataError for a folder of anyone else's, before anything is written."""
    folder = Path(folder).expanduser().resolve()
    if own is None or (folder != own.resolve() and own.resolve() not in folder.parents):
        check_replaceable(folder, marker, what, f"choose a new or empty folder for {what}")
        ensure_writable(folder, what, f"choose another {what}")
        write_marker(folder, marker, f"written by skinseg; skinseg may write to this folder again ({what})")
    ensure_writable(folder, what, f"choose another {what}")
    return folder


def check_file_target(path: str | Path, what: str, ours, kind: str, hint: str) -> Path:
    """``path`` resolved, when a command may write its file there: a new file, or one that ``ours(path)`` says
    the same command wrote (``kind`` names such files). A folder, anyone else's file, a ground-truth folder or a
    read-only folder is refused, before the work that fills the file."""
    from skinseg.data.isic import ground_truth_folder_of

    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise DataError(f"{what} {target} is a folder; {hint}")
    truth = ground_truth_folder_of(target.parent)
    if truth is not None:
        raise DataError(f"{what} {target} is inside the ground-truth folder {truth}; {hint}")
    if target.exists() and not ours(target):
        raise DataError(f"{what} {target} exists and is not {kind}, so it is left alone; {hint}")
    ensure_writable(target.parent, f"the folder of {what}", hint)
    return target


def check_json_target(path: str | Path, what: str) -> Path:
    """``path`` resolved, when a JSON result may be written there: a new file, or a JSON file (an earlier
    result); see :func:`check_file_target`."""
    return check_file_target(path, what, _is_json, "a JSON file", f"name a new file, e.g. {what} scores.json")


def _is_json(path: Path) -> bool:
    import json

    try:
        json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return True
