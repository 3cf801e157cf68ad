"""Fetch the official ISIC 2018 Task 1-2 input and Task 2 ground-truth zips and extract them into the loader's layout.

Downloads resume: bytes go to ``ROOT/.downloads/<name>.part`` and a rerun asks the server for the rest with a
``Range`` header. The ``.part`` becomes ``<name>`` only once its size equals the server's Content-Length (and
``expected_size`` when a caller gives one). Each zip is then extracted into ``ROOT/<split>/`` through a temporary folder
and one rename, so a split folder is either complete or absent; a marker file next to it records the extraction.
"""
from __future__ import annotations

import http.client
import json
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable

from tqdm.auto import tqdm

from skinseg.data.isic import SPLITS
from skinseg.errors import ArchiveNotFound, DataError, DownloadError
from skinseg.files import remove_dead_temp_files, replace_folder, temp_sibling
from skinseg.progress import bar as progress_bar

BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/2018/"
CHALLENGE_PAGE = "https://challenge.isic-archive.com/data/#2018"

# split -> file names in the bucket. The server's Content-Length is the size check (their byte sizes have not
# been measured against the real bucket here, so none is claimed).
ARCHIVES: dict[str, list[str]] = {
    "train": ["ISIC2018_Task1-2_Training_Input.zip", "ISIC2018_Task2_Training_GroundTruth_v3.zip"],
    "val": ["ISIC2018_Task1-2_Validation_Input.zip", "ISIC2018_Task2_Validation_GroundTruth.zip"],
    "test": ["ISIC2018_Task1-2_Test_Input.zip", "ISIC2018_Task2_Test_GroundTruth.zip"],
}
OPTIONAL_ARCHIVES: frozenset[str] = frozenset({"ISIC2018_Task2_Test_GroundTruth.zip"})

DOWNLOAD_DIR = ".downloads"
CHUNK_BYTES = 1 << 20
RETRY_WAIT_S = 5.0
_JUNK_FOLDERS = {"__MACOSX"}
_JUNK_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


class _Transient(DownloadError):
    """A failure that a retry or a rerun may cure: cut connection, timeout, server error."""


def download_isic(root: str | Path, splits: Iterable[str] = SPLITS, base_url: str = BASE_URL, progress: bool = True,
                  *, timeout: float = 60.0, retries: int = 3) -> dict:
    """Download and extract the official ISIC 2018 Task 2 zips of ``splits`` below ``root``.

    Args:
        root: data root; zips go to ``root/.downloads``, folders to ``root/<split>/``.
        splits: any of ``train``, ``val``, ``test``.
        base_url: folder URL holding the zips (tests point it at a local server).
        progress: show tqdm bars and status lines on stderr.
        timeout: seconds to wait for the server on connect and on each read.
        retries: automatic resumes after a cut connection, a timeout or a 5xx answer.

    Returns:
        ``downloaded`` (fetched now), ``present`` (complete zips reused), ``extracted`` (zip -> folder),
        ``already_extracted`` and ``skipped`` (zip -> reason): file names, JSON-ready.
    """
    root = Path(root).expanduser()
    base_url = base_url.rstrip("/") + "/"
    result: dict = {"root": str(root), "downloaded": [], "present": [], "extracted": {}, "already_extracted": [],
                    "skipped": {}}
    for split in _check_splits(splits):
        split_dir = root / split
        for name in ARCHIVES[split]:
            if _is_extracted(split_dir, name):
                result["already_extracted"].append(name)
                continue
            if (split_dir / Path(name).stem).exists():
                reason = (f"{split_dir / Path(name).stem} exists but was not extracted by `skinseg download`; "
                          "left as is (delete it to download and extract again)")
                result["skipped"][name] = reason
                _say(f"skipped {name}: {reason}", progress)
                continue
            url = base_url + name
            try:
                fetched = download_file(url, root / DOWNLOAD_DIR / name, progress=progress,
                                        timeout=timeout, retries=retries)
            except ArchiveNotFound as e:
                if name not in OPTIONAL_ARCHIVES:
                    raise
                reason = f"HTTP {e.code} for {url}: not published there; the {split} split loads as images only"
                result["skipped"][name] = reason
                _say(f"skipped {name}: {reason}", progress)
                continue
            result["downloaded" if fetched else "present"].append(name)
            result["extracted"][name] = str(extract_zip(root / DOWNLOAD_DIR / name, split_dir, progress=progress,
                                                        fetched=fetched))
    return result


def download_file(url: str, dest: str | Path, *, expected_size: int | None = None, progress: bool = True,
                  timeout: float = 60.0, retries: int = 3) -> bool:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it; False when ``dest`` was already complete.

    Raises:
        ArchiveNotFound: HTTP 403 or 404.
        DownloadError: any other failure; a cut-short ``.part`` is kept so that a rerun resumes it.
    """
    dest = Path(dest)
    if dest.is_file():
        if expected_size is not None and dest.stat().st_size != expected_size:
            raise DownloadError(f"{dest} has {dest.stat().st_size} bytes, expected {expected_size}: "
                                "delete it and run again")
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, expected_size, progress, timeout)
            break
        except _Transient as e:
            kept = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(f"{e}; {kept} bytes kept in {part}: run the same command again to resume") from e
            _say(f"{e}; resuming in {RETRY_WAIT_S * (attempt + 1):g} s", progress)
            time.sleep(RETRY_WAIT_S * (attempt + 1))
    part.replace(dest)
    return True


def _fetch_into(url: str, part: Path, expected_size: int | None, progress: bool, timeout: float) -> None:
    """One request: append the missing bytes to ``part`` (or rewrite it) and check its final size."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            if _range_total(e.headers.get("Content-Range")) == have:
                return  # an earlier run got every byte but stopped before the rename
            part.unlink()
            raise _Transient(f"{url}: the server refused to resume at byte {have}; restarting from zero") from e
        raise _http_error(e, url, part.parent) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Transient(f"cannot reach {url} ({reason}); check the network, a proxy or --base-url") from e
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Transient(f"{url}: the server resumed at byte {start}, not {have}; restarting from zero")
            mode = "ab"
        else:  # 200: the server ignored the Range header and sends the whole file
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(f"{url} has {total} bytes, the table in skinseg/data/download.py expects "
                                f"{expected_size}: the file changed upstream; check it and update ARCHIVES")
        if total is not None:
            _check_free_space(part.parent, total - have)
        name = part.name.removesuffix(".part")
        with open(part, mode) as f, progress_bar(total=total, initial=have, desc=name, unit="B", unit_scale=True,
                                                 unit_divisor=1024, show=progress, leave=False) as bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise _Transient(f"{url}: transfer broke off ({e!r})") from e
    size = part.stat().st_size
    total = total if total is not None else expected_size
    if total is not None and size < total:
        raise _Transient(f"{url}: got {size} of {total} bytes (Content-Length), the connection was cut short")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"{url}: got {size} bytes but Content-Length says {total}; deleted {part}: run again")


def extract_zip(zip_path: str | Path, split_dir: str | Path, *, progress: bool = True, fetched: bool = True) -> Path:
    """Extract one zip into ``split_dir`` atomically and return the folder it made.

    A file that is not a zip is deleted only when this run downloaded it (``fetched``); one that was there
    before is the user's, and is left for them to delete.

    A zip with one top folder yields that folder; a zip of loose files yields a folder named after the zip.
    ``__MACOSX/`` and desktop junk are skipped; absolute or ``..`` member paths are refused.
    """
    zip_path, split_dir = Path(zip_path), Path(split_dir)
    if not zipfile.is_zipfile(zip_path):
        if not fetched:
            raise DownloadError(f"{zip_path} is not a zip file and was not downloaded by this run, so it is left "
                                "alone; delete or move it, then run again")
        zip_path.unlink()
        raise DownloadError(f"{zip_path} is not a zip file (the server sent something else, e.g. an error page); "
                            "deleted it: check --base-url and run again")
    with zipfile.ZipFile(zip_path) as zf:
        members = _plan_members(zf, zip_path)
        files = [m for m in members if not m[0].is_dir()]
        single_top = len({rel.parts[0] for _, rel in members}) == 1 and all(len(rel.parts) > 1 for _, rel in files)
        top = members[0][1].parts[0] if single_top else zip_path.stem
        target = split_dir / top
        if target.exists():
            raise DownloadError(f"{target} exists but was not extracted by `skinseg download`; delete it and run again")
        split_dir.mkdir(parents=True, exist_ok=True)
        remove_dead_temp_files(split_dir)
        tmp = temp_sibling(split_dir / top)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        base = tmp if single_top else tmp / top
        try:
            for info, rel in progress_bar(members, desc=f"extracting {zip_path.name}", unit="file", show=progress,
                                          leave=False):
                out = base.joinpath(*rel.parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
            # Marker first: a crash before the rename leaves a marker without its folder, which means "redo".
            _marker(split_dir, zip_path.name).write_text(json.dumps(
                {"zip": zip_path.name, "bytes": zip_path.stat().st_size, "folder": top, "files": len(files)}))
            replace_folder(tmp / top, target)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise DownloadError(f"{zip_path} is corrupt ({e}); delete it and run again to download it afresh") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _plan_members(zf: zipfile.ZipFile, zip_path: Path) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every member to extract with its safe relative path; junk dropped, unsafe paths refused before any write."""
    planned = []
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
            raise DownloadError(f"{zip_path.name}: member {info.filename!r} would be written outside the extraction "
                                f"folder (absolute path or '..'); not an official ISIC zip: delete {zip_path} "
                                "and check --base-url")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or _JUNK_FOLDERS.intersection(parts) or parts[-1] in _JUNK_FILES or parts[-1].startswith("._"):
            continue
        planned.append((info, PurePosixPath(*parts)))
    if not planned:
        raise DownloadError(f"{zip_path} holds no files; delete it and run again")
    return planned


def _marker(split_dir: Path, zip_name: str) -> Path:
    return split_dir / f".{zip_name}.extracted"


def _is_extracted(split_dir: Path, zip_name: str) -> bool:
    marker = _marker(split_dir, zip_name)
    if not marker.is_file():
        return False
    try:
        folder = json.loads(marker.read_text())["folder"]
    except (ValueError, KeyError):
        return False
    return (split_dir / folder).is_dir()


def _check_splits(splits: Iterable[str]) -> list[str]:
    splits = [splits] if isinstance(splits, str) else list(splits)
    unknown = [s for s in splits if s not in ARCHIVES]
    if unknown or not splits:
        raise DataError(f"unknown split(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                        f"valid splits: {', '.join(ARCHIVES)}")
    return splits


def _http_error(e: urllib.error.HTTPError, url: str, folder: Path) -> DownloadError:
    if e.code in (403, 404):
        return ArchiveNotFound(f"HTTP {e.code} {e.reason} for {url}: the file is not at this address; check "
                               f"--base-url (default {BASE_URL}) or download it by hand from {CHALLENGE_PAGE} "
                               f"into {folder}", e.code)
    if e.code >= 500:
        return _Transient(f"HTTP {e.code} {e.reason} for {url}: server error")
    return DownloadError(f"HTTP {e.code} {e.reason} for {url}; check --base-url (default {BASE_URL})")


def _content_range(header: str | None) -> tuple[int, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL); TOTAL may be ``*``."""
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    if not m:
        raise _Transient(f"the server answered 206 with a bad Content-Range {header!r}")
    return int(m.group(1)), None if m.group(2) == "*" else int(m.group(2))


def _range_total(header: str | None) -> int | None:
    """Total size from a 416 answer's ``bytes */TOTAL``."""
    m = re.fullmatch(r"bytes \*/(\d+)", (header or "").strip())
    return int(m.group(1)) if m else None


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(f"{folder} has {free / 2**30:.1f} GiB free, the download needs {needed / 2**30:.1f} GiB "
                            "(and about as much again to extract): free space or choose another ROOT")


def _say(message: str, progress: bool) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)
