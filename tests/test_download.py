"""`skinseg download` against a local HTTP server: official layout, resume, size check, skips, zip-slip, the CLI."""
from __future__ import annotations

import functools
import io
import re
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinseg.cli import main
from skinseg.data import download
from skinseg.data.download import ARCHIVES, DownloadError, download_file, download_isic
from skinseg.data.isic import ATTRIBUTES, SPLIT_FOLDERS, find_splits, mask_name, missing_masks

IDS = {"train": ["ISIC_0000000", "ISIC_0000001"], "val": ["ISIC_0000100", "ISIC_0000101"], "test": ["ISIC_0000200"]}


def _png(mode: str, value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 16, 3) if mode == "RGB" else (12, 16), value, np.uint8), mode=mode).save(
        buf, format="JPEG" if mode == "RGB" else "PNG")
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _official_zips() -> dict[str, bytes]:
    """Zips named and laid out as the official ones; val ground truth holds loose files, train input macOS junk."""
    zips = {}
    for split, ids in IDS.items():
        input_zip, gt_zip = ARCHIVES[split]
        img_folder, gt_folder = SPLIT_FOLDERS[split]
        images = {f"{img_folder}/{i}.jpg": _png("RGB", 100 + n) for n, i in enumerate(ids)}
        images |= {f"{img_folder}/LICENSE.txt": b"CC-BY-NC", f"{img_folder}/ATTRIBUTION.txt": b"ISIC"}
        if split == "train":
            images |= {f"__MACOSX/{img_folder}/._{ids[0]}.jpg": b"junk", f"{img_folder}/.DS_Store": b"junk"}
        zips[input_zip] = _zip(images)
        prefix = "" if split == "val" else f"{gt_folder}/"
        zips[gt_zip] = _zip({prefix + mask_name(i, a): _png("L", 255 * (k % 2)) for i in ids
                             for k, a in enumerate(ATTRIBUTES)})
    return zips


@pytest.fixture(scope="module")
def official_zips() -> dict[str, bytes]:
    return _official_zips()


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files from ``directory`` and honours ``Range: bytes=N-`` with 206 + Content-Range."""

    honour_range = True

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(m.group(1)) if m and self.honour_range else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(self.body(data[start:]))

    def body(self, data: bytes) -> bytes:
        return data

    def log_message(self, *args) -> None:
        pass


class IgnoreRangeHandler(RangeHandler):
    honour_range = False


class TruncatingHandler(RangeHandler):
    """Announces the full Content-Length but sends only half, then closes the connection."""

    def body(self, data: bytes) -> bytes:
        return data[: len(data) // 2]


class TruncateOnceHandler(RangeHandler):
    def body(self, data: bytes) -> bytes:
        first = not getattr(self.server, "truncated", False)
        self.server.truncated = True
        return data[: len(data) // 2] if first else data


@pytest.fixture
def serve(tmp_path: Path):
    """serve(files, handler) -> base URL of a local server; ``.requests`` on the returned server logs (path, Range)."""
    servers = []

    def start(files: dict[str, bytes], handler: type = RangeHandler) -> tuple[str, ThreadingHTTPServer]:
        folder = tmp_path / f"served{len(servers)}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        server.requests = []
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)


def test_download_extracts_into_the_layout_the_loader_reads(tmp_path, serve, official_zips):
    url, server = serve(official_zips)
    root = tmp_path / "isic"
    result = download_isic(root, ("train", "val"), base_url=url, progress=False)

    splits = find_splits(root)
    assert set(splits) == {"train", "val"}
    for name in ("train", "val"):
        assert list(splits[name].ids) == IDS[name]
        assert splits[name].image_dir == root / name / SPLIT_FOLDERS[name][0]
        assert splits[name].mask_dir == root / name / SPLIT_FOLDERS[name][1]
        assert missing_masks(splits[name]) == []
    image_dir = splits["train"].image_dir
    assert (image_dir / "LICENSE.txt").read_bytes() == b"CC-BY-NC"
    assert not (root / "train" / "__MACOSX").exists() and not (image_dir / ".DS_Store").exists()
    assert sorted(result["downloaded"]) == sorted(n for s in ("train", "val") for n in ARCHIVES[s])
    assert result["extracted"]["ISIC2018_Task2_Validation_GroundTruth.zip"] == str(splits["val"].mask_dir)
    assert result["skipped"] == {} and result["present"] == []
    assert not list(root.rglob("*.part")) and not list(root.rglob("*.tmp"))

    server.requests.clear()
    again = download_isic(root, ("train", "val"), base_url=url, progress=False)
    assert server.requests == []
    assert len(again["already_extracted"]) == 4 and again["downloaded"] == [] and again["extracted"] == {}


def test_complete_zip_is_extracted_without_downloading_again(tmp_path, serve, official_zips):
    name = "ISIC2018_Task1-2_Validation_Input.zip"
    url, server = serve(official_zips)
    root = tmp_path / "isic"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / name).write_bytes(official_zips[name])
    result = download_isic(root, ["val"], base_url=url, progress=False)
    assert result["present"] == [name]
    assert [path for path, _ in server.requests] == ["/ISIC2018_Task2_Validation_GroundTruth.zip"]
    assert list(find_splits(root)["val"].ids) == IDS["val"]


@pytest.mark.parametrize("handler, status", [(RangeHandler, "206 appended"), (IgnoreRangeHandler, "200 restarted")])
def test_resume_sends_range_and_ends_byte_identical(tmp_path, serve, official_zips, handler, status):
    name = "ISIC2018_Task1-2_Training_Input.zip"
    data = official_zips[name]
    url, server = serve({name: data}, handler)
    dest = tmp_path / ".downloads" / name
    dest.parent.mkdir()
    Path(f"{dest}.part").write_bytes(data[: len(data) // 2])
    assert download_file(url + name, dest, progress=True) is True
    assert server.requests == [(f"/{name}", f"bytes={len(data) // 2}-")]
    assert dest.read_bytes() == data
    assert not Path(f"{dest}.part").exists()


def test_complete_part_is_renamed_after_a_416_answer(tmp_path, serve, official_zips):
    name = "ISIC2018_Task1-2_Training_Input.zip"
    url, server = serve({name: official_zips[name]})
    dest = tmp_path / name
    Path(f"{dest}.part").write_bytes(official_zips[name])
    assert download_file(url + name, dest, progress=False) is True
    assert dest.read_bytes() == official_zips[name]


def test_truncated_download_is_an_error_and_leaves_no_zip(tmp_path, serve, official_zips):
    name = "ISIC2018_Task1-2_Validation_Input.zip"
    url, _ = serve(official_zips, TruncatingHandler)
    root = tmp_path / "isic"
    with pytest.raises(DownloadError, match=rf"{re.escape(url + name)}: got \d+ of {len(official_zips[name])} bytes.*"
                                            r"run the same command again to resume"):
        download_isic(root, ["val"], base_url=url, progress=False, retries=0)
    assert not (root / ".downloads" / name).exists()
    assert (root / ".downloads" / f"{name}.part").stat().st_size == len(official_zips[name]) // 2
    assert not (root / "val").exists()


def test_cut_connection_is_resumed_by_a_retry(tmp_path, serve, official_zips):
    name = "ISIC2018_Task1-2_Validation_Input.zip"
    data = official_zips[name]
    url, server = serve({name: data}, TruncateOnceHandler)
    dest = tmp_path / name
    assert download_file(url + name, dest, progress=False, retries=1) is True
    assert server.requests == [(f"/{name}", None), (f"/{name}", f"bytes={len(data) // 2}-")]
    assert dest.read_bytes() == data


def test_size_other_than_the_known_size_is_an_error(tmp_path, serve, official_zips):
    name = "ISIC2018_Task1-2_Validation_Input.zip"
    url, _ = serve(official_zips)
    with pytest.raises(DownloadError, match="has \\d+ bytes, the table .* expects 12345"):
        download_file(url + name, tmp_path / name, expected_size=12345, progress=False, retries=0)
    assert not (tmp_path / name).exists()


def test_missing_optional_test_ground_truth_is_skipped(tmp_path, serve, official_zips):
    url, _ = serve({"ISIC2018_Task1-2_Test_Input.zip": official_zips["ISIC2018_Task1-2_Test_Input.zip"]})
    root = tmp_path / "isic"
    result = download_isic(root, ["test"], base_url=url, progress=False)
    assert result["skipped"].keys() == {"ISIC2018_Task2_Test_GroundTruth.zip"}
    assert "HTTP 404" in result["skipped"]["ISIC2018_Task2_Test_GroundTruth.zip"]
    test = find_splits(root)["test"]
    assert list(test.ids) == IDS["test"] and not test.has_masks


def test_missing_required_zip_names_the_code_the_url_and_what_to_do(tmp_path, serve):
    url, _ = serve({})
    with pytest.raises(DownloadError, match=r"HTTP 404 .*for http://127\.0\.0\.1:\d+/ISIC2018_Task1-2_Validation_"
                                            r"Input\.zip: .*check --base-url"):
        download_isic(tmp_path, ["val"], base_url=url, progress=False)


@pytest.mark.parametrize("member", ["../../evil.txt", "ISIC2018_Task1-2_Validation_Input/../../evil.txt",
                                    "/tmp/evil.txt", "C:/evil.txt", "..\\..\\evil.txt"])
def test_zip_slip_member_is_refused_before_anything_is_written(tmp_path, serve, member):
    name = "ISIC2018_Task1-2_Validation_Input.zip"
    url, _ = serve({name: _zip({"ISIC2018_Task1-2_Validation_Input/ISIC_0000100.jpg": b"x", member: b"x"})})
    root = tmp_path / "a" / "isic"
    with pytest.raises(DownloadError, match=rf"member {re.escape(repr(member))} would be written outside"):
        download_isic(root, ["val"], base_url=url, progress=False)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (root / "val" / "ISIC2018_Task1-2_Validation_Input").exists()


def test_non_zip_answer_is_deleted_with_a_clear_error(tmp_path, serve):
    name = "ISIC2018_Task1-2_Validation_Input.zip"
    url, _ = serve({name: b"<html>AccessDenied</html>"})
    with pytest.raises(DownloadError, match="is not a zip file"):
        download_isic(tmp_path, ["val"], base_url=url, progress=False)
    assert not (tmp_path / ".downloads" / name).exists()


def test_cli_download_val(tmp_path, serve, official_zips, capsys):
    url, _ = serve(official_zips)
    root = tmp_path / "isic"
    assert main(["download", str(root), "--splits", "val", "--base-url", url, "--no-progress"]) == 0
    assert '"ISIC2018_Task2_Validation_GroundTruth.zip"' in capsys.readouterr().out
    assert list(find_splits(root)["val"].ids) == IDS["val"]

    assert main(["download", str(root), "--splits", "val,tset", "--base-url", url]) == 2
    assert "unknown split(s) 'tset'; valid splits: train, val, test" in capsys.readouterr().err
