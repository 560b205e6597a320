"""`pipeline demo`: a static page that runs a bundle in the browser, served with the bundle on localhost.

Static files only (the page, the JavaScript predictor, onnxruntime-web's WebAssembly build and the
bundle); nothing is computed on the server. What it serves is an allow-list fixed at start: exact URL
paths, each mapped to one file, so there are no directory listings, no dotfiles and nothing the bundle's
manifest does not list. It answers GET and HEAD only, and only to requests whose Host header names it by
a loopback name (or the exact address it was bound to): a DNS-rebinding page, whose requests carry its own
host name, cannot read the bundle.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote_to_bytes

from seqship.runtime.bundle import MANIFEST, safe_member
from seqship.runtime.errors import SeqshipError
from seqship.runtime.predictor import Predictor

log = logging.getLogger(__name__)

# Package data of `runtime` (pyproject.toml ships web/*, src/*.js and package.json), so that the demo runs
# from an installed wheel as from a checkout. node_modules/ exists only in a checkout.
JS_ROOT = Path(__file__).resolve().parent / "js"
ORT_WEB_ENV = "SEQSHIP_ORT_WEB"
CHECKOUT_HINT = "npm ci --prefix runtime/js --ignore-scripts"
# onnxruntime-web's files the page loads: ort.min.js picks one of the WebAssembly builds at run time.
ORT_FILES = re.compile(r"ort\.min\.js(\.map)?|ort-wasm-simd-threaded(\.[a-z]+)?\.(mjs|wasm)")
IMPORT = re.compile(r"""\b(?:import|export)\b[^;]*?\bfrom\s*["']\./([A-Za-z0-9_.-]+\.js)["']""")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".map": "application/json",
    ".md": "text/plain; charset=utf-8",
    ".onnx": "application/octet-stream",
}
MAX_PATH = 1024  # no file the demo serves has a longer URL
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class DemoError(SeqshipError):
    """The demo cannot be served (a missing bundle or JavaScript dependency)."""


def ort_web_version() -> str:
    """The onnxruntime-web version the JavaScript predictor is pinned to (runtime/js/package.json)."""
    path = JS_ROOT / "package.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["dependencies"]["onnxruntime-web"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DemoError(f"{path}: cannot read the onnxruntime-web version ({e}); reinstall seqship") from None


def ort_web_cache() -> Path:
    """The folder `pipeline demo` looks in for an `npm install --prefix` of onnxruntime-web."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seqship" / "ort-web"


def install_hint() -> str:
    """What to run to get onnxruntime-web for the demo, and how to point the demo at it."""
    cache = ort_web_cache()
    hint = (
        f"run `npm install --prefix {cache} onnxruntime-web@{ort_web_version()}` (Node.js 18+; the demo then "
        f"finds it there), or pass --ort-web DIR (or set {ORT_WEB_ENV}) for a copy installed elsewhere"
    )
    if (JS_ROOT / "package-lock.json").is_file():
        hint += f"; in this checkout, `{CHECKOUT_HINT}` also does"
    return hint


def _dist_in(folder: Path) -> Path | None:
    # An npm --prefix, the onnxruntime-web package folder or its dist/ folder itself.
    for dist in (folder, folder / "dist", folder / "node_modules" / "onnxruntime-web" / "dist"):
        if (dist / "ort.min.js").is_file():
            return dist.resolve()
    return None


def find_ort_web(explicit: str | os.PathLike | None = None) -> Path:
    """onnxruntime-web's dist/ folder: `explicit`, else the checkout's node_modules, else ort_web_cache()."""
    if explicit is not None:
        dist = _dist_in(Path(explicit).expanduser())
        if dist is None:
            raise DemoError(
                f"{explicit}: no onnxruntime-web there (no ort.min.js in it, in dist/ or in "
                f"node_modules/onnxruntime-web/dist/); {install_hint()}"
            )
    else:
        prefixes = [JS_ROOT, ort_web_cache()]  # npm --prefix folders: the checkout's, then the cache
        dist = next((d for d in map(_dist_in, prefixes) if d is not None), None)
        if dist is None:
            looked = " and ".join(str(p / "node_modules" / "onnxruntime-web") for p in prefixes)
            raise DemoError(f"onnxruntime-web not found (looked for {looked}); {install_hint()}")
    try:
        found = json.loads((dist.parent / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        found = None
    if found is not None and found != ort_web_version():
        log.warning("%s is onnxruntime-web %s; the predictor is tested with %s", dist, found, ort_web_version())
    return dist


def browser_modules(src: Path = JS_ROOT / "src", entry: str = "browser.js") -> list[str]:
    """The JavaScript files the page imports: browser.js and what it imports, transitively (not node.js)."""
    seen, todo = [], [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = src / name
        if not path.is_file():
            raise DemoError(f"{path}: missing from the installed seqship (the demo page imports it); reinstall seqship")
        seen.append(name)
        todo.extend(IMPORT.findall(path.read_text(encoding="utf-8")))
    return sorted(seen)


def routes(
    bundle_dir: str | os.PathLike, ort_web: str | os.PathLike | None = None, expected_sha256: str | None = None
) -> dict[str, Path]:
    """Every URL path the demo serves -> the file served there; anything else is 404. expected_sha256: the
    bundle digest to insist on, as Predictor.load takes it."""
    # refuse to serve a bundle an application would refuse
    predictor = Predictor.load(bundle_dir, providers="cpu", expected_sha256=expected_sha256)
    dist = find_ort_web(ort_web)
    table = {
        "/": JS_ROOT / "web" / "index.html",
        "/index.html": JS_ROOT / "web" / "index.html",
        "/app.js": JS_ROOT / "web" / "app.js",
    }
    table.update({f"/js/{name}": JS_ROOT / "src" / name for name in browser_modules()})
    table.update({f"/ort/{p.name}": p for p in dist.iterdir() if ORT_FILES.fullmatch(p.name) and p.is_file()})
    root = Path(bundle_dir)
    table["/bundle/" + MANIFEST] = root / MANIFEST
    # safe_member refuses names that leave the folder; the loader above has checked each one already.
    table.update({f"/bundle/{name}": safe_member(root, name) for name in predictor.bundle.manifest["files"]})
    for path in table.values():
        if not path.is_file():
            raise DemoError(f"{path}: missing; the demo page needs it (reinstall seqship, or copy the whole bundle)")
    # Resolved once here: a symlinked bundle or node_modules (pnpm, a shared checkout) is followed at start.
    return {url: path.resolve() for url, path in table.items()}


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_loopback(host: str) -> bool:
    """Whether an address (as bound: an IP, no brackets) only accepts connections from this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


class DemoServer(ThreadingHTTPServer):
    """The demo's HTTP server: a fixed file table and the Host names it answers to."""

    daemon_threads = True

    def __init__(self, host: str, port: int, files: dict[str, Path], idle_timeout: float | None = None):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host.strip("[]"), port), DemoHandler)
        self.files = files
        self.idle_timeout = idle_timeout
        self.host = host.strip("[]")
        bound, self.port = self.server_address[:2]
        self.loopback_only = is_loopback(bound)
        names = {*LOOPBACK_NAMES, _bracket(self.host), _bracket(bound)}
        allowed = {f"{name}:{self.port}" for name in names}
        if self.port == 80:  # a browser leaves the default port out of Host
            allowed |= names
        self.allowed_hosts = frozenset(h.lower() for h in allowed)

    @property
    def url(self) -> str:
        """The page's address (a wildcard bind is shown as the loopback address)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{_bracket(host)}:{self.port}/"

    def handle_error(self, request, client_address) -> None:
        """Log, never print, a request's failure; a client that hung up or went quiet is routine."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("demo: %s: %s", client_address, error)
        else:
            log.error("demo: request from %s failed", client_address, exc_info=True)


class DemoHandler(BaseHTTPRequestHandler):
    """GET and HEAD of the server's file table, for allowed Host names; a short 4xx text for anything else."""

    server: DemoServer
    server_version = "seqship-demo"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # a status line even for a malformed request line (not HTTP/0.9's bare body)
    timeout = 30  # seconds a connection may stay silent before it is closed (a stalled client holds a thread)
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def setup(self) -> None:
        """Per connection: set the idle timeout before the request is read."""
        if self.server.idle_timeout is not None:
            self.timeout = self.server.idle_timeout
        self.linger = False
        super().setup()

    def do_GET(self) -> None:
        """Serve one file of the table."""
        self.serve(body=True)

    def do_HEAD(self) -> None:
        """The headers of GET, without the body."""
        self.serve(body=False)

    def __getattr__(self, name: str):
        # Every other method, made-up ones included, is 405 (http.server would answer 501, a 5xx).
        if name.startswith("do_"):
            return self.not_allowed
        raise AttributeError(name)

    def not_allowed(self) -> None:
        """405 for a method other than GET and HEAD."""
        self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD", [("Allow", "GET, HEAD")])

    def serve(self, body: bool) -> None:
        """Check the Host header and the path, then send the file or refuse."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            return self.refuse(HTTPStatus.BAD_REQUEST, "exactly one Host header is required")
        if hosts[0].strip().lower() not in self.server.allowed_hosts:
            return self.refuse(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"this server answers only to its loopback address: open {self.server.url}",
            )
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if len(path) > MAX_PATH:
            return self.refuse(HTTPStatus.REQUEST_URI_TOO_LONG, f"paths are at most {MAX_PATH} characters")
        try:
            # http.server decoded the request line as latin-1; urllib's unquote would replace bad UTF-8 silently.
            path = unquote_to_bytes(bytes(path, "latin-1").decode("ascii")).decode("utf-8")
        except (UnicodeError, ValueError):
            return self.refuse(HTTPStatus.BAD_REQUEST, "the path is not percent-encoded UTF-8")
        if not path.startswith("/") or "\\" in path or any(c < " " or c == "\x7f" for c in path):
            return self.refuse(HTTPStatus.BAD_REQUEST, "malformed path")
        file = self.server.files.get(path)
        if file is None:
            return self.refuse(HTTPStatus.NOT_FOUND, "not found")
        try:
            f = open(file, "rb")
        except OSError:
            return self.refuse(HTTPStatus.NOT_FOUND, "not found (the file has gone)")
        with f:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", CONTENT_TYPES.get(file.suffix, "application/octet-stream"))
            self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.end_headers()
            if body:
                shutil.copyfileobj(f, self.wfile)

    def refuse(self, status: HTTPStatus, text: str, headers: list[tuple[str, str]] = ()) -> None:
        """A short text/plain answer, then close (reading what the client still sends, see finish)."""
        data = f"{status.value} {status.phrase}: {text}\n".encode()
        self.linger = True
        self.close_connection = True
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (400 bad request line, 414, 431): answered, then a lingering close."""
        self.linger = True
        super().send_error(code, message, explain)

    def end_headers(self) -> None:
        """Headers on every answer: never cached, never sniffed, never embedded by another site."""
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def finish(self) -> None:
        """After a refusal, read what the client is still sending before closing.

        Closing a socket with unread bytes sends a reset, which can destroy our answer before the client
        reads it (a POST body, the rest of an over-long request line): the client would see a dropped
        connection instead of the 4xx. At most 16 MiB and 2 s, so a client cannot hold the thread.
        """
        super().finish()
        if not self.linger:
            return
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline, left = time.monotonic() + 2, 16 << 20
            while time.monotonic() < deadline and left > 0:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:
        """To the logger at debug level (the CLI prints the URL once)."""
        log.debug("demo: %s %s", self.address_string(), format % args)


def make_server(
    bundle_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    ort_web: str | os.PathLike | None = None,
    idle_timeout: float | None = None,
    expected_sha256: str | None = None,
) -> DemoServer:
    """A server for the demo page and the bundle; call serve_forever() (port 0 picks a free one)."""
    return DemoServer(host, port, routes(bundle_dir, ort_web, expected_sha256), idle_timeout)
