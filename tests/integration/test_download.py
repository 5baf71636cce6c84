"""`source: download` (issue 10) against a local HTTP server on 127.0.0.1 started by the tests:
basic auth, Range, a mode that ignores Range, dropped connections, parts of small tars."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import tarfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import default_params, make_clip, run_cli

from pipeline.data import acquire, download, fetch, httpclient
from pipeline.errors import PipelineError
from pipeline.stages import StageContext

USER, PASSWORD = "lrw-user-7f3a", "pw-9c1e-SECRET"
LRW_NAMES = [p["name"] for p in download.OFFICIAL["lrw"]["parts"]]


# --------------------------------------------------------------------------- the server
class Server:
    """Serves `files` under /vgg/ with basic auth, Range (206), If-Range and two failure modes."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.ignore_range = False  # answer 200 with the whole body to a Range request
        self.drop: dict[str, int] = {}  # name -> GETs still to cut off halfway
        self.requests: list[tuple[str, str, str | None, int]] = []  # (method, name, Range, status)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                owner.serve(self, head=True)

            def do_GET(self):
                owner.serve(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/vgg/"

    def serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        name = h.path.rsplit("/", 1)[-1]
        rng = h.headers.get("Range")
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if h.headers.get("Authorization") != f"Basic {token}":
            return self.reply(h, head, name, rng, 401, b"", {"WWW-Authenticate": 'Basic realm="vgg"'})
        if h.path.startswith("/moved/"):  # a mirror that redirects to the real location
            return self.reply(h, head, name, rng, 301, b"", {"Location": f"/vgg/{name}"})
        if not h.path.startswith("/vgg/") or name not in self.files:
            return self.reply(h, head, name, rng, 404, b"")
        data = self.files[name]
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        start, status = 0, 200
        if rng and not self.ignore_range and h.headers.get("If-Range", etag) == etag:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self.reply(h, head, name, rng, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status, headers["Content-Range"] = 206, f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if not head and self.drop.get(name, 0) > 0:
            self.drop[name] -= 1
            self.reply(h, head, name, rng, status, body, headers, cut=len(body) // 2)
            return
        self.reply(h, head, name, rng, status, body, headers)

    def reply(self, h, head, name, rng, status, body, headers=None, cut=None) -> None:
        self.requests.append((h.command, name, rng, status))
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body if cut is None else body[:cut])  # then the connection closes: a drop
        h.close_connection = True

    def gets(self) -> list[tuple[str, str | None, int]]:
        return [(n, r, s) for m, n, r, s in self.requests if m == "GET"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- archives
def tar_bytes(members: dict[str, bytes], extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info in extra or []:  # links and folders first, so later members could go through them
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def split(data: bytes, names: list[str]) -> dict[str, bytes]:
    k = -(-len(data) // len(names))
    return {n: data[i * k : (i + 1) * k] for i, n in enumerate(names)}


def listed(files: dict[str, bytes], **override) -> list[dict]:
    return [
        {"name": n, "size": len(b), "sha256": override.get(n, hashlib.sha256(b).hexdigest())} for n, b in files.items()
    ]


@pytest.fixture(scope="module")
def lrw_members(tmp_path_factory) -> dict[str, bytes]:
    src = tmp_path_factory.mktemp("lrwsrc")
    members = {}
    for w, word in enumerate(("ABOUT", "WORLD")):
        for s, split_name in enumerate(("train", "val", "test")):
            stem = f"lipread_mp4/{word}/{split_name}/{word}_00001"
            clip = make_clip(src / f"{word}{split_name}.mp4", size=48, seed=w * 3 + s)
            members[f"{stem}.mp4"] = clip.read_bytes()
            members[f"{stem}.txt"] = f"Text: {word}\nDuration: 1.16 seconds\n".encode()
    return members


@pytest.fixture(scope="module")
def lrw_parts(lrw_members) -> dict[str, bytes]:
    return split(tar_bytes(lrw_members), LRW_NAMES)


@pytest.fixture
def server(lrw_parts):
    srv = Server(lrw_parts)
    yield srv
    srv.close()


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A project folder as cwd, credentials in the environment, no netrc, fast retries."""
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    monkeypatch.setenv("LRW_USERNAME", USER)
    monkeypatch.setenv("LRW_PASSWORD", PASSWORD)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(fetch, "RETRY_WAIT", 0.01)
    return tmp_path


def view(root: Path, url_base: str | None, parts=None, ds: str = "lrw") -> dict:
    data = default_params()["data"]
    data["dataset"] = ds
    data[ds].update(source="download", root=str(root), url_base=url_base, parts=parts)
    return {"data": data}


def run(v: dict) -> dict:
    return acquire.run(v, StageContext())


# --------------------------------------------------------------------------- tests
def test_download_lrw_happy_path_and_no_second_download(work, server, lrw_parts, lrw_members, caplog):
    root = work / "LRW"
    caplog.set_level(logging.INFO, logger="pipeline")
    summary = run(view(root, server.url))  # the package's part names, from a mirror
    assert summary["kind"] == "downloaded" and summary["source"] == "download"
    assert summary["clips"] == {"train": 2, "val": 2, "test": 2} and summary["words"] == 2
    assert [p["name"] for p in summary["parts"]] == LRW_NAMES
    for p in summary["parts"]:
        data = lrw_parts[p["name"]]
        assert p["size"] == len(data) and p["sha256"] == hashlib.sha256(data).hexdigest()
    for name, data in lrw_members.items():
        assert (root / name).read_bytes() == data
    assert sorted(x.name for x in (root / ".download/parts").iterdir() if not x.name.endswith(".sha256")) == LRW_NAMES
    assert not (root / ".download/extract.tmp").exists()
    record = json.loads(Path("data/raw/lrw/source.json").read_text())
    assert record["root"] == str(root) and record["url_base"] == server.url and record["parts"] == summary["parts"]
    assert summary["download"]["fetched_parts"] == 7
    assert summary["download"]["fetched_bytes"] == sum(map(len, lrw_parts.values()))
    assert [m for m, *_ in server.requests] == ["HEAD"] * 7 + ["GET"] * 7
    assert "7 parts (7 fetched, 0 already present)" in caplog.text
    assert PASSWORD not in caplog.text and USER not in caplog.text
    n = len(server.requests)
    again = run(view(root, server.url))  # completed: validated, nothing fetched
    assert len(server.requests) == n and again["download"]["fetched_parts"] == 0
    assert json.loads(Path("data/raw/lrw/source.json").read_text()) == record


def test_wrong_password_names_dataset_and_variables(work, server, monkeypatch):
    monkeypatch.setenv("LRW_PASSWORD", "not-the-password")
    root = work / "LRW"
    with pytest.raises(PipelineError) as err:
        run(view(root, server.url))
    msg = str(err.value)
    assert msg.startswith("LRW:") and "LRW_USERNAME" in msg and "LRW_PASSWORD" in msg and "401" in msg
    assert f"{server.url}lrw-v1-partaa" in msg and "not-the-password" not in msg
    assert not root.exists() and not Path("data").exists()  # nothing half-written
    assert server.gets() == []


def test_netrc_credentials_and_missing_credentials(work, server, monkeypatch):
    monkeypatch.delenv("LRW_USERNAME")
    monkeypatch.delenv("LRW_PASSWORD")
    root = work / "LRW"
    with pytest.raises(PipelineError, match="none was found: set LRW_USERNAME and LRW_PASSWORD"):
        run(view(root, server.url))
    rc = work / "netrc"
    rc.write_text(f"machine 127.0.0.1 login {USER} password wrong-one\n")
    rc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(rc))
    with pytest.raises(PipelineError) as err:
        run(view(root, server.url))
    assert f"'machine 127.0.0.1' entry in {rc}" in str(err.value) and "wrong-one" not in str(err.value)
    rc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    assert run(view(root, server.url))["clips"]["train"] == 2


def test_interrupted_transfer_resumes_on_rerun(work, server, lrw_parts, monkeypatch):
    monkeypatch.setattr(fetch, "RETRIES", 0)
    server.drop = {"lrw-v1-partab": 1}
    root = work / "LRW"
    parts = listed(lrw_parts)
    with pytest.raises(PipelineError) as err:
        run(view(root, server.url, parts))
    partial = root / ".download/parts/lrw-v1-partab.part"
    half = len(lrw_parts["lrw-v1-partab"]) // 2
    assert "re-run the same command to resume" in str(err.value) and str(partial) in str(err.value)
    assert partial.stat().st_size == half and (root / ".download/parts/lrw-v1-partaa").is_file()
    assert not (root / "lipread_mp4").exists() and not Path("data").exists()
    n = len(server.requests)
    run(view(root, server.url, parts))
    second = [r for r in server.requests[n:] if r[0] == "GET"]
    assert ("GET", "lrw-v1-partab", f"bytes={half}-", 206) in second
    assert not any(r[1] == "lrw-v1-partaa" for r in second)  # a finished part is not fetched again
    assert (root / ".download/parts/lrw-v1-partab").read_bytes() == lrw_parts["lrw-v1-partab"]


def test_complete_part_left_unrenamed_is_finished_without_refetching(work, server, lrw_parts):
    folder = work / "LRW/.download/parts"
    folder.mkdir(parents=True)
    (folder / "lrw-v1-partaa.part").write_bytes(lrw_parts["lrw-v1-partaa"])  # killed before the rename
    run(view(work / "LRW", server.url, listed(lrw_parts)))
    size = len(lrw_parts["lrw-v1-partaa"])
    assert ("lrw-v1-partaa", f"bytes={size}-", 416) in server.gets()
    assert (folder / "lrw-v1-partaa").read_bytes() == lrw_parts["lrw-v1-partaa"]


def test_dropped_connection_is_resumed_within_the_run(work, server, lrw_parts, caplog):
    server.drop = {"lrw-v1-partac": 1}
    caplog.set_level(logging.WARNING, logger="pipeline")
    summary = run(view(work / "LRW", server.url, listed(lrw_parts)))
    half = len(lrw_parts["lrw-v1-partac"]) // 2
    assert ("lrw-v1-partac", f"bytes={half}-", 206) in server.gets() and "retry 1 of 3" in caplog.text
    assert summary["download"]["fetched_bytes"] == sum(map(len, lrw_parts.values()))


def test_server_ignoring_range_restarts_cleanly(work, server, lrw_parts, monkeypatch, caplog):
    monkeypatch.setattr(fetch, "RETRIES", 0)
    server.drop = {"lrw-v1-partab": 1}
    root = work / "LRW"
    with pytest.raises(PipelineError):
        run(view(root, server.url, listed(lrw_parts)))
    server.ignore_range = True
    caplog.set_level(logging.INFO, logger="pipeline")
    run(view(root, server.url, listed(lrw_parts)))
    half = len(lrw_parts["lrw-v1-partab"]) // 2
    assert ("lrw-v1-partab", f"bytes={half}-", 200) in server.gets()
    assert "ignored the Range request" in caplog.text
    assert (root / ".download/parts/lrw-v1-partab").read_bytes() == lrw_parts["lrw-v1-partab"]


def test_checksum_mismatch_stops_and_removes_the_part(work, server, lrw_parts):
    root = work / "LRW"
    bad = "0" * 64
    with pytest.raises(PipelineError) as err:
        run(view(root, server.url, listed(lrw_parts, **{"lrw-v1-partab": bad})))
    msg = str(err.value)
    assert "checksum mismatch for lrw-v1-partab" in msg and bad in msg
    assert hashlib.sha256(lrw_parts["lrw-v1-partab"]).hexdigest() in msg
    parts = root / ".download/parts"
    assert not (parts / "lrw-v1-partab").exists() and not (parts / "lrw-v1-partab.part").exists()
    assert (parts / "lrw-v1-partaa").is_file() and not (root / "lipread_mp4").exists()


def test_unsafe_members_are_refused_and_nothing_is_written_outside(work, lrw_members):
    outside_abs = work / "abs-escape.txt"
    links = []
    for name, target in (("lipread_mp4/up", "../../../../link-escape"), ("d", "."), ("d/d/d/s", "../../..")):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        links.append(info)
    evil = {**lrw_members, "../../../dotdot-escape.txt": b"x", str(outside_abs): b"x", "d/d/d/s/deep-escape.txt": b"x"}
    files = split(tar_bytes(evil, links), LRW_NAMES[:2])
    srv = Server(files)
    root = work / "LRW"
    try:
        with pytest.raises(PipelineError) as err:
            run(view(root, srv.url, listed(files)))
    finally:
        srv.close()
    msg = str(err.value)
    assert "refused" in msg and "nothing of the archive was kept" in msg
    for needle in ("../../../dotdot-escape.txt", str(outside_abs), "lipread_mp4/up", "d/d/d/s"):
        assert needle in msg
    assert not outside_abs.exists() and not list(work.rglob("*escape*"))
    assert sorted(p.name for p in root.iterdir()) == [".download"]
    assert sorted(p.name for p in (root / ".download").iterdir()) == ["parts"]
    assert not Path("data").exists()


def test_disk_space_is_checked_before_downloading(work, server, lrw_parts, monkeypatch):
    monkeypatch.setattr(download, "_free_bytes", lambda path: 1000)
    root = work / "LRW"
    with pytest.raises(PipelineError, match="not enough disk space") as err:
        run(view(root, server.url, listed(lrw_parts)))
    assert "data.lrw.root" in str(err.value)
    assert server.gets() == [] and not root.exists()


def test_lrs2_download_with_split_lists(work, tmp_path, monkeypatch):
    monkeypatch.setenv("LRS2_USERNAME", USER)
    monkeypatch.setenv("LRS2_PASSWORD", PASSWORD)
    ids = {"train": ["600001/00001", "600001/00002"], "val": ["600002/00001"], "test": ["600003/00001"]}
    members = {}
    for k, clip in enumerate(c for cs in ids.values() for c in cs):
        members[f"mvlrs_v1/main/{clip}.mp4"] = make_clip(tmp_path / f"c{k}.mp4", size=48, seed=k).read_bytes()
        members[f"mvlrs_v1/main/{clip}.txt"] = b"Text:  HELLO THERE\nConf:  4\n"
    pretrain = tarfile.TarInfo("mvlrs_v1/pretrain")
    pretrain.type, pretrain.mode = tarfile.DIRTYPE, 0o755
    names = [p["name"] for p in download.OFFICIAL["lrs2"]["parts"] if p.get("kind") != "file"]
    files = split(tar_bytes(members, [pretrain]), names)
    files.update(
        {f"{s}.txt": ("\n".join(c + (" NF" if s == "test" else "") for c in ids[s]) + "\n").encode() for s in ids}
    )
    files["pretrain.txt"] = b""
    srv = Server(files)
    try:
        summary = run(view(tmp_path / "LRS2", srv.url, ds="lrs2"))
    finally:
        srv.close()
    assert summary["clips"] == {"train": 2, "val": 1, "test": 1}
    assert (tmp_path / "LRS2/test.txt").read_bytes() == files["test.txt"]
    assert {p["kind"] for p in summary["parts"]} == {"part", "file"}


def test_redirect_keeps_credentials_on_the_same_host_only(work, server):
    summary = run(view(work / "LRW", server.url.replace("/vgg/", "/moved/")))
    assert summary["clips"]["train"] == 2 and ("GET", "lrw-v1-partaa", None, 301) in server.requests
    handler = httpclient._SameHostRedirect()
    req = urllib.request.Request("https://vgg.example/data/p")
    req.add_unredirected_header("Authorization", "Basic xyz")
    same = handler.redirect_request(req, None, 302, "Found", {}, "https://vgg.example/other/p")
    other = handler.redirect_request(req, None, 302, "Found", {}, "https://cdn.example/p")
    downgraded = handler.redirect_request(req, None, 302, "Found", {}, "http://vgg.example/p")
    assert same.unredirected_hdrs.get("Authorization") == "Basic xyz"
    assert "Authorization" not in other.unredirected_hdrs and "Authorization" not in other.headers
    assert "Authorization" not in downgraded.unredirected_hdrs


def test_existing_copy_and_credentials_in_url_are_refused(work, server):
    root = work / "LRW"
    (root / "lipread_mp4").mkdir(parents=True)
    with pytest.raises(PipelineError, match="already holds lipread_mp4"):
        run(view(root, server.url))
    url = server.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    with pytest.raises(PipelineError, match="must not hold a user name or password") as err:
        run(view(work / "other", url))
    assert PASSWORD not in str(err.value)
    assert server.requests == []


# --------------------------------------------------------------------------- through the CLI
def _cli_params(root: Path, url_base: str) -> dict:
    p = default_params()
    p["data"]["dataset"] = "lrw"
    p["data"]["lrw"].update(source="download", root=str(root), url_base=url_base, parts=None)
    return p


def test_cli_download_keeps_credentials_out_of_logs_and_metadata(tmp_path, server):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "params.yaml").write_text(yaml.safe_dump(_cli_params(tmp_path / "LRW", server.url), sort_keys=False))
    env = {
        "LRW_USERNAME": USER,
        "LRW_PASSWORD": PASSWORD,
        "NETRC": str(tmp_path / "no-netrc"),
        "NO_PROXY": "127.0.0.1,localhost",
        "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}",
    }
    proc = run_cli(["acquire", "--log", "logs/acquire.log"], cwd=proj, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "acquire: lrw:" in proc.stdout and "download.fetched_parts=7" in proc.stdout
    secrets = [s.encode() for s in (USER, PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())]
    searched = [proj / "mlflow.db"]
    searched += [f for d in ("logs", "data/raw", "mlruns") for f in (proj / d).rglob("*") if f.is_file()]
    searched += [f for f in (tmp_path / "LRW/.download").rglob("*") if f.is_file() and f.suffix in (".json", ".sha256")]
    assert (proj / "mlflow.db").is_file() and (proj / "logs/acquire.log").is_file()
    for f in searched:
        data = f.read_bytes()
        assert not any(s in data for s in secrets), f"credentials found in {f}"
    assert not any(s.decode() in proc.stdout + proc.stderr for s in secrets)
