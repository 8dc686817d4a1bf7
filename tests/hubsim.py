"""A local stand-in for the Hugging Face Hub's HTTP API: just the calls `huggingface_hub` makes to
create a repo and commit files to it (repo create, preupload, commit as NDJSON, LFS batch and
upload for large files). Uploaded files are kept in memory so tests can read what was published.

    hub = HubSim(); api = HfApi(endpoint=hub.url, token="hf_test")
    ...; hub.repos["me/x"]["files"]["README.md"] -> bytes; hub.close()
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubSim:
    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.lfs: dict[str, bytes] = {}
        self.cards: list[str] = []
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    return self.rfile.read(n)
                if self.headers.get("Transfer-Encoding") == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if not size:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return b""

            def _send(self, code: int, obj=None):
                data = json.dumps(obj if obj is not None else {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self._body()
                sim.requests.append(("POST", self.path))
                if not self.headers.get("Authorization", "").startswith("Bearer "):
                    return self._send(401, {"error": "Invalid credentials"})
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["api", "validate-yaml"]:      # the Hub checks a README's front matter
                    import yaml

                    text = json.loads(body).get("content", "")
                    try:
                        meta = yaml.safe_load(text.split("---")[1]) if text.startswith("---") else {}
                        ok = isinstance(meta, dict)
                    except (yaml.YAMLError, IndexError):
                        ok = False
                    sim.cards.append(text)
                    return self._send(200 if ok else 400, {"errors": [] if ok else ["invalid metadata"], "warnings": []})
                if parts[:3] == ["api", "repos", "create"]:
                    req = json.loads(body)
                    repo = f"{req.get('organization') or 'me'}/{req['name']}"
                    if req.get("organization") is None and "/" in req["name"]:
                        repo = req["name"]
                    private = bool(req.get("private")) or req.get("visibility") == "private"
                    sim.repos.setdefault(repo, {"private": private, "files": {}, "request": req})
                    return self._send(200, {"url": f"{sim.url}/{repo}", "name": repo})
                if parts[:2] == ["api", "models"] and "preupload" in parts:
                    files = json.loads(body).get("files", [])
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files],
                                            "commitOid": "0" * 40})
                if parts[:2] == ["api", "models"] and "commit" in parts:
                    repo = "/".join(parts[2:4])
                    if repo not in sim.repos:
                        return self._send(404, {"error": "Repository not found"})
                    for line in body.decode().splitlines():
                        if not line.strip():
                            continue
                        item = json.loads(line)
                        if item.get("key") == "file":
                            v = item["value"]
                            sim.repos[repo]["files"][v["path"]] = base64.b64decode(v["content"])
                        elif item.get("key") == "lfsFile":
                            v = item["value"]
                            sim.repos[repo]["files"][v["path"]] = sim.lfs[v["oid"]]
                    oid = hashlib.sha1(body).hexdigest()
                    return self._send(200, {"commitUrl": f"{sim.url}/{repo}/commit/{oid}", "commitOid": oid,
                                            "commitMessage": "", "pullRequestUrl": None})
                return self._send(404, {"error": f"not simulated: POST {self.path}"})

            def do_GET(self):
                sim.requests.append(("GET", self.path))
                return self._send(404, {"error": f"not simulated: GET {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
