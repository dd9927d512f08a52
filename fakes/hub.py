"""A local stand-in for the Hugging Face hub's dataset API, for `huggingface_hub`'s `HfFileSystem`
(`hf://datasets/...`) with `HF_ENDPOINT` pointing at it: repo info, `tree` listings, `paths-info`
and `resolve` downloads with Range support, each dataset repository served from a local folder.
A gated repository answers file downloads as the hub does without an accepted licence (401 with
`X-Error-Code: GatedRepo`); its info and listing stay public, as on the hub.

Every request is recorded (`FakeHub.requests`) and the file bytes sent are counted
(`FakeHub.bytes_sent`), so a test can assert what was fetched and how much.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Path] = {}
        self.gated: set[str] = set()
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, range header)
        self.bytes_sent = 0  # file bytes sent by `resolve` downloads
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                hub.handle(self, "GET")

            def do_HEAD(self) -> None:
                hub.handle(self, "HEAD")

            def do_POST(self) -> None:
                hub.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add(self, repo_id: str, folder: Path, gated: bool = False) -> None:
        self.repos[repo_id] = folder
        if gated:
            self.gated.add(repo_id)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # Answers ------------------------------------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(request.path)
        self.requests.append((method, url.path, request.headers.get("Range")))
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        try:
            if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
                self.api(request, method, parts[2] + "/" + parts[3], parts[4:], parse_qs(url.query))
            elif parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
                self.resolve(request, method, parts[1] + "/" + parts[2], "/".join(parts[5:]))
            else:
                self.send_json(request, 404, {"error": "not found"})
        except BrokenPipeError:
            pass

    def api(self, request, method: str, repo: str, rest: list[str], query: dict) -> None:
        folder = self.repos.get(repo)
        if folder is None:
            return self.send_json(request, 404, {"error": "Repository not found"}, error_code="RepoNotFound")
        if not rest or rest[0] == "revision":
            return self.send_json(
                request,
                200,
                {
                    "id": repo,
                    "sha": SHA,
                    "private": False,
                    "gated": repo in self.gated and "auto",
                    "siblings": [],
                },
            )
        if rest[0] == "tree":
            path = "/".join(rest[2:])
            target = folder / path
            if not target.is_dir():
                return self.send_json(request, 404, {"error": "not found"}, error_code="EntryNotFound")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            found = target.rglob("*") if recursive else target.iterdir()
            return self.send_json(request, 200, [self.entry(folder, p) for p in sorted(found)])
        if rest[0] == "paths-info" and method == "POST":
            length = int(request.headers.get("Content-Length") or 0)
            form = parse_qs(request.rfile.read(length).decode())
            paths = form.get("paths", [])
            return self.send_json(
                request, 200, [self.entry(folder, folder / p) for p in paths if (folder / p).exists()]
            )
        return self.send_json(request, 404, {"error": "not found"})

    @staticmethod
    def entry(folder: Path, path: Path) -> dict:
        rel = path.relative_to(folder).as_posix()
        if path.is_dir():
            return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "path": rel}
        return {  # a file's oid is its content's hash, as the hub's git blob id
            "type": "file",
            "oid": hashlib.sha1(path.read_bytes()).hexdigest(),
            "size": path.stat().st_size,
            "path": rel,
        }

    def resolve(self, request, method: str, repo: str, path: str) -> None:
        folder = self.repos.get(repo)
        if folder is None:
            return self.send_json(request, 404, {"error": "Repository not found"}, error_code="RepoNotFound")
        if repo in self.gated:
            message = (
                f"Access to dataset {repo} is restricted. You must have access to it and be authenticated."
            )
            return self.send_json(
                request, 401, {"error": message}, error_code="GatedRepo", error_message=message
            )
        file = folder / path
        if not file.is_file():
            return self.send_json(request, 404, {"error": "Entry not found"}, error_code="EntryNotFound")
        data = file.read_bytes()
        start, end, status = 0, len(data), 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            end = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
            status = 206
        body = data[start:end]
        request.send_response(status)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Accept-Ranges", "bytes")
        request.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        request.send_header("X-Repo-Commit", SHA)
        if status == 206:
            request.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        request.end_headers()
        if method == "HEAD":
            return
        with self.lock:
            self.bytes_sent += len(body)
        request.wfile.write(body)

    @staticmethod
    def send_json(
        request, status: int, payload, error_code: str | None = None, error_message: str | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        if error_code:
            request.send_header("X-Error-Code", error_code)
        if error_message:
            request.send_header("X-Error-Message", error_message)
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)
