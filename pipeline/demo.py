"""`pipeline demo`: a static page that runs a bundle in the browser, served with the bundle on localhost.

Static files only (the page, the JavaScript predictor, onnxruntime-web's WebAssembly build and the
bundle); nothing is computed on the server.
"""
from __future__ import annotations

import mimetypes
import posixpath
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from runtime.predictor import Predictor
from runtime.errors import SeqshipError

JS_ROOT = Path(__file__).resolve().parent.parent / "runtime" / "js"
ORT_WEB = JS_ROOT / "node_modules" / "onnxruntime-web" / "dist"
INSTALL_HINT = "npm ci --prefix runtime/js --ignore-scripts"


class DemoError(SeqshipError):
    """The demo cannot be served (a missing bundle or JavaScript dependency)."""


def routes(bundle_dir: Path) -> dict[str, Path]:
    """URL prefix -> folder it serves."""
    if not (ORT_WEB / "ort.min.js").is_file():
        raise DemoError(f"{ORT_WEB}: onnxruntime-web is not installed; run `{INSTALL_HINT}` from the checkout")
    Predictor.load(bundle_dir, providers="cpu")  # refuse to serve a bundle an application would refuse
    # Resolved once here, so that the containment check in translate_path compares real paths (a
    # symlinked node_modules, as pnpm or a shared checkout makes, would otherwise look like an escape).
    folders = {"/bundle/": Path(bundle_dir), "/ort/": ORT_WEB, "/js/": JS_ROOT / "src", "/": JS_ROOT / "web"}
    return {prefix: folder.resolve() for prefix, folder in folders.items()}


class DemoHandler(SimpleHTTPRequestHandler):
    """Maps URL prefixes onto folders; refuses anything that would leave them."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream", ".json": "application/json"}

    def __init__(self, *args, routes: dict[str, Path], **kwargs):
        self.routes = routes
        super().__init__(*args, directory=str(routes["/"]), **kwargs)

    def translate_path(self, path: str) -> str:
        path = posixpath.normpath(unquote(urlsplit(path).path))
        if path in ("/", "."):
            path = "/index.html"
        for prefix, root in self.routes.items():
            if path.startswith(prefix) or path + "/" == prefix:
                rel = path[len(prefix):] if path.startswith(prefix) else ""
                target = (root / rel).resolve()
                if target == root or root in target.parents:
                    return str(target)
                break
        return str(self.routes["/"] / "__not_found__")

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet: the CLI prints the URL once
        pass


def make_server(bundle_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server for the demo page and the bundle; call serve_forever() (port 0 picks a free one)."""
    mimetypes.add_type("application/wasm", ".wasm")
    return ThreadingHTTPServer((host, port), partial(DemoHandler, routes=routes(bundle_dir)))
