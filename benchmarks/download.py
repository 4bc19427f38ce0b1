"""Throughput of pfm's verified https download beside a bare reference, over a local HTTP server.

pfm: ``pfm.checkpoints.download.fetch_file`` (lock, .part file, fsync, rename, sha256 check of the result).
reference: one ``urllib`` GET copied to a file with ``shutil.copyfileobj`` and hashed afterwards (what a
minimal verified download does, without lock, resume or atomic rename). Both read from the same server on
127.0.0.1, so the figure is the client-side cost, not the network's.

    python benchmarks/download.py --mib 256 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


def _server(data: bytes) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            view = memoryview(data)
            for i in range(0, len(data), 1 << 20):
                self.wfile.write(view[i : i + (1 << 20)])

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"


def main() -> None:
    """Print MiB/s of pfm's download and of the reference, best of ``--repeats``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="file size in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = os.urandom(args.mib << 20)
    digest = hashlib.sha256(data).hexdigest()
    httpd, url = _server(data)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PFM_CACHE"] = tmp
        from pfm.checkpoints.download import fetch_file, sha256_file
        from pfm.checkpoints.registry import FileSpec

        spec = FileSpec(url=url, sha256=digest)
        pfm_times, ref_times = [], []
        for _ in range(args.repeats):
            shutil.rmtree(Path(tmp) / "url", ignore_errors=True)
            start = time.perf_counter()
            path = fetch_file(spec, progress=False)
            pfm_times.append(time.perf_counter() - start)
            assert path.stat().st_size == len(data)
            start = time.perf_counter()
            target = Path(tmp) / "reference.bin"
            with urllib.request.urlopen(url) as resp, open(target, "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
            assert sha256_file(target) == digest
            ref_times.append(time.perf_counter() - start)
    httpd.shutdown()
    print(f"file {args.mib} MiB over 127.0.0.1, best of {args.repeats}")
    print(f"pfm fetch_file (lock, .part, fsync, rename, sha256): {args.mib / min(pfm_times):8.1f} MiB/s")
    print(f"reference urllib copy + sha256:                      {args.mib / min(ref_times):8.1f} MiB/s")
    print(f"load average: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
