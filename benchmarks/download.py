"""`source: download` throughput and memory against a local HTTP server, for two archive sizes.

A synthetic LRW-layout tar (random 64 KiB "clips" with their .txt, so the member count grows with
the size too) is split into parts and served from 127.0.0.1 by a ThreadingHTTPServer with basic
auth and Range support, streamed from disk. Each measurement runs in a fresh child process:
- bare: urllib reads every part into a file, as wget/curl do (no checksum, no resume state);
- stage: pipeline.data.download.acquire (HEAD probes, streaming download with sha256 to
  `.part` + rename, joined-stream extraction with the member checks, layout validation).
Extraction is compared with `cat part* | tar -x` (GNU tar, no checks) and with Python's tarfile
extracting the same joined stream with its `data` filter only (what the stage's member checks,
counting and link handling add to the interpreter's own cost of creating files).
Prints, per size, MB/s of both and their ratio, the extraction rates and the child's peak RSS
(VmHWM from /proc, which, unlike ru_maxrss, is not inherited from the forking parent; ru_maxrss
elsewhere) with its growth over the peak after imports; last, the peak-RSS ratio large/small
(1.0 = memory flat in file size).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

USER, PASSWORD = "bench-user", "bench-password"
CLIP = 64 * 1024
CHUNK = 1 << 20


def make_parts(folder: Path, mib: int, n_parts: int) -> list[dict]:
    """A tar of `mib` MiB in LRW layout, written in n_parts pieces; the list of {name, size}."""
    folder.mkdir(parents=True, exist_ok=True)
    tar_path = folder / "whole.tar"
    rng = os.urandom
    n_clips = max(3, mib * (1 << 20) // CLIP)
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for k in range(n_clips):
            word, split = f"W{k // 300:03d}", ("train", "val", "test")[k % 3]
            stem = f"lipread_mp4/{word}/{split}/{word}_{k:05d}"
            for suffix, data in ((".mp4", rng(CLIP)), (".txt", f"Text: {word}\n".encode())):
                info = tarfile.TarInfo(stem + suffix)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    total = tar_path.stat().st_size
    per = -(-total // n_parts)
    parts = []
    with open(tar_path, "rb") as src:
        for i in range(n_parts):
            name = f"lrw-v1-parta{chr(ord('a') + i)}"
            left = min(per, total - i * per)
            with open(folder / name, "wb") as out:
                while left > 0:
                    block = src.read(min(CHUNK, left))
                    out.write(block)
                    left -= len(block)
            parts.append({"name": name, "size": (folder / name).stat().st_size, "sha256": None})
    tar_path.unlink()
    return parts


def serve(folder: Path) -> ThreadingHTTPServer:
    token = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.reply(head=True)

        def do_GET(self):
            self.reply(head=False)

        def reply(self, head: bool) -> None:
            path = folder / self.path.rsplit("/", 1)[-1]
            if self.headers.get("Authorization") != token or not path.is_file():
                self.send_response(401 if self.headers.get("Authorization") != token else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size = path.stat().st_size
            rng = self.headers.get("Range")
            start = int(rng[6:].split("-")[0]) if rng else 0
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            if head:
                return
            with open(path, "rb") as fh:
                fh.seek(start)
                while block := fh.read(CHUNK):
                    self.wfile.write(block)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def peak_rss_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(spec: dict) -> dict:
    """Runs in a fresh process: one measurement, with this process's own peak RSS."""
    os.environ.update(
        {"LRW_USERNAME": USER, "LRW_PASSWORD": PASSWORD, "NETRC": "/nonexistent", "NO_PROXY": "127.0.0.1,localhost"}
    )
    from pipeline.data import download

    base_rss = peak_rss_kib()
    started = time.perf_counter()
    if spec["mode"] == "bare":
        token = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        nbytes = 0
        Path(spec["root"]).mkdir(parents=True)
        for p in spec["parts"]:
            req = urllib.request.Request(spec["url"] + p["name"], headers={"Authorization": token})
            with urllib.request.urlopen(req, timeout=60) as resp, open(Path(spec["root"]) / p["name"], "wb") as out:
                while block := resp.read(CHUNK):
                    out.write(block)
                    nbytes += len(block)
        out = {"bytes": nbytes, "download_s": time.perf_counter() - started}
    else:
        section = {"source": "download", "root": spec["root"], "url_base": spec["url"], "parts": spec["parts"]}
        record, stats = download.acquire("lrw", section)
        out = {
            "bytes": stats["download"]["fetched_bytes"],
            "download_s": stats["download"]["seconds"],
            "extract_s": stats["extract"]["seconds"],
            "extract_bytes": stats["extract"]["bytes"],
            "files": stats["extract"]["files"],
            "clips": sum(record["clips"].values()),
        }
    out.update(peak_rss_kib=peak_rss_kib(), import_rss_kib=base_rss)
    return out


def tar_baseline(served: Path, parts: list[dict], dest: Path) -> float:
    """Seconds for `cat part* | tar -x` of the same parts."""
    dest.mkdir()
    started = time.perf_counter()
    cat = subprocess.Popen(["cat", *[str(served / p["name"]) for p in parts]], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=cat.stdout, check=True)
    cat.stdout.close()
    cat.wait()
    seconds = time.perf_counter() - started
    shutil.rmtree(dest)
    return seconds


def tarfile_baseline(served: Path, parts: list[dict], dest: Path) -> float:
    """Seconds for tarfile's stream extraction (data filter, no other checks) of the joined parts."""
    from pipeline.data.archive import JoinedParts

    started = time.perf_counter()
    with (
        JoinedParts([served / p["name"] for p in parts]) as raw,
        tarfile.open(fileobj=raw, mode="r|*", bufsize=CHUNK) as tar,
    ):
        tar.extractall(dest, filter="data")
    seconds = time.perf_counter() - started
    shutil.rmtree(dest)
    return seconds


def measure(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    shutil.rmtree(spec["root"], ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({spec['mode']}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    """The fastest run's timings (the machine may be shared), the highest peak RSS of all."""
    out = dict(min(runs, key=lambda r: r["download_s"]))
    if "extract_s" in out:
        out["extract_s"] = min(r["extract_s"] for r in runs)
    out["peak_rss_kib"] = max(r["peak_rss_kib"] for r in runs)
    out["import_rss_kib"] = max(r["import_rss_kib"] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,512", help="archive sizes in MiB, comma-separated (default 64,512)")
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest counts (default 3)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    peaks = []
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        for mib in (int(s) for s in args.sizes.split(",")):
            served = Path(tmp) / f"served-{mib}"
            parts = make_parts(served, mib, args.parts)
            tar_s = min(tar_baseline(served, parts, Path(tmp) / "tar") for _ in range(args.repeat))
            py_s = min(tarfile_baseline(served, parts, Path(tmp) / "py") for _ in range(args.repeat))
            httpd = serve(served)
            url = f"http://127.0.0.1:{httpd.server_address[1]}/vgg/"
            try:
                bare = best(
                    [
                        measure({"mode": "bare", "url": url, "parts": parts, "root": str(Path(tmp) / "bare")})
                        for _ in range(args.repeat)
                    ]
                )
                stage = best(
                    [
                        measure({"mode": "stage", "url": url, "parts": parts, "root": str(Path(tmp) / "LRW")})
                        for _ in range(args.repeat)
                    ]
                )
            finally:
                httpd.shutdown()
                httpd.server_close()
            shutil.rmtree(served)
            bare_rate = bare["bytes"] / 1e6 / bare["download_s"]
            rate = stage["bytes"] / 1e6 / stage["download_s"]
            peak, grown = stage["peak_rss_kib"] / 1024, (stage["peak_rss_kib"] - stage["import_rss_kib"]) / 1024
            peaks.append((mib, peak))
            print(
                f"{mib} MiB in {args.parts} parts ({stage['files']} files, {stage['clips']} clips), "
                f"best of {args.repeat}:"
            )
            print(f"  bare urllib to file (as wget): {bare_rate:7.1f} MB/s")
            print(
                f"  stage download (sha256, .part, rename): {rate:7.1f} MB/s  (ratio stage/bare {rate / bare_rate:.2f})"
            )
            mb = stage["extract_bytes"] / 1e6
            ex_rate, tar_rate, py_rate = mb / stage["extract_s"], mb / tar_s, mb / py_s
            print(f"  cat parts | tar -x: {tar_rate:7.1f} MB/s")
            print(f"  tarfile stream, data filter only: {py_rate:7.1f} MB/s")
            print(
                f"  stage extraction (joined stream, checked members): {ex_rate:7.1f} MB/s  "
                f"(ratio stage/tar {ex_rate / tar_rate:.2f}, stage/tarfile {ex_rate / py_rate:.2f})"
            )
            print(
                f"  peak RSS {peak:.1f} MiB ({grown:+.1f} MiB over the "
                f"{stage['import_rss_kib'] / 1024:.1f} MiB after imports)"
            )
    (small, p_small), (large, p_large) = peaks[0], peaks[-1]
    print(f"peak RSS ratio {large} MiB / {small} MiB archive: {p_large / p_small:.2f} (1.0 = flat in file size)")


if __name__ == "__main__":
    main()
