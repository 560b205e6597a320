"""`pipeline demo` against real HTTP clients: only the allow-listed files, only to loopback Host names,
a short 4xx for anything odd (never a traceback or a dropped connection), idle connections closed, and
the demo running from an installed wheel with no checkout.
"""

import http.client
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from seqship.runtime.demo import DemoError, DemoHandler, browser_modules, find_ort_web, make_server

REPO = Path(__file__).resolve().parents[2]
JS = REPO / "runtime" / "js"
ORT_PACKAGE = JS / "node_modules" / "onnxruntime-web"
ORT_VERSION = json.loads((JS / "package.json").read_text())["dependencies"]["onnxruntime-web"]
SECRET = "SECRET_TOKEN=hunter2"


def need_ort_web() -> None:
    if not (ORT_PACKAGE / "dist" / "ort.min.js").is_file():
        pytest.fail(f"{ORT_PACKAGE} is missing: run `npm ci --prefix runtime/js --ignore-scripts`")


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory) -> Path:
    """The tiny bundle plus files its manifest does not list: a secret, a note, a sub-folder."""
    dst = tmp_path_factory.mktemp("demo") / "bundle"
    shutil.copytree(tiny_run[1]["bundle"], dst)
    (dst / ".env").write_text(SECRET + "\n")
    (dst / "notes.txt").write_text(SECRET + "\n")
    (dst / "sub").mkdir()
    (dst / "sub" / "secret.json").write_text(json.dumps({"token": SECRET}))
    return dst


def start(bundle_dir, host="127.0.0.1", **kw):
    need_ort_web()
    server = make_server(bundle_dir, host, 0, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(bundle):
    s = start(bundle)
    yield s
    stop(s)


@pytest.fixture
def no_server_errors(capfd):
    """Fails the test if the server logged an error or printed a traceback while it ran."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("seqship.runtime.demo")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    assert not records, [r.getMessage() for r in records]
    assert "Traceback" not in capfd.readouterr().err


def get(port, method, path, host="default", headers=(), body=None):
    """One request with http.client: (status, headers, body). host: one value, a list, or None (no Host)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hosts = (
            [f"127.0.0.1:{port}"]
            if host == "default"
            else []
            if host is None
            else [host]
            if isinstance(host, str)
            else host
        )
        for h in hosts:
            conn.putheader("Host", h)
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r, r.read()
    finally:
        conn.close()


def raw(port, data: bytes) -> bytes:
    """Bytes no HTTP client library would send; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_serves_exactly_the_page_its_modules_ort_web_and_the_manifests_files(server, bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    modules = browser_modules()
    assert "browser.js" in modules and "predictor.js" in modules and "node.js" not in modules
    expected = {
        "/",
        "/index.html",
        "/app.js",
        "/bundle/manifest.json",
        *(f"/bundle/{n}" for n in manifest["files"]),
        *(f"/js/{m}" for m in modules),
    }
    ort = {u for u in server.files if u.startswith("/ort/")}
    assert "/ort/ort.min.js" in ort and "/ort/ort-wasm-simd-threaded.jsep.wasm" in ort
    assert set(server.files) == expected | ort
    for url, path in server.files.items():
        if path.stat().st_size > 1 << 20:  # the big WebAssembly builds: headers only
            status, r, body = get(server.port, "HEAD", url)
            assert status == 200 and int(r.getheader("Content-Length")) == path.stat().st_size and body == b""
            continue
        status, r, body = get(server.port, "GET", url)
        assert status == 200 and body == path.read_bytes(), url
        assert r.getheader("X-Content-Type-Options") == "nosniff" and r.getheader("Cache-Control") == "no-store"
    assert get(server.port, "GET", "/")[1].getheader("Content-Type").startswith("text/html")
    assert get(server.port, "GET", "/js/browser.js")[1].getheader("Content-Type").startswith("text/javascript")
    assert (
        get(server.port, "HEAD", "/ort/ort-wasm-simd-threaded.jsep.wasm")[1].getheader("Content-Type")
        == "application/wasm"
    )
    assert get(server.port, "GET", "/bundle/manifest.json?x=1")[2] == (bundle / "manifest.json").read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/bundle/.env",
        "/bundle/notes.txt",
        "/bundle/sub/secret.json",
        "/bundle/sub/",
        "/bundle/",
        "/bundle",
        "/js/",
        "/ort/",
        "/web/",
        "/js/node.js",
        "/ort/ort.node.min.js",
        "/ort/../package.json",
        "/web/index.html",
        "/.env",
        "/package.json",
        "/bundle/../../../../etc/passwd",
        "/bundle/%2e%2e/%2e%2e/etc/passwd",
        "/bundle/.%2fmanifest.json",
        "/js/../../../pyproject.toml",
        "/bundle//manifest.json",
        "/BUNDLE/manifest.json",
        "//etc/passwd",
    ],
)
def test_anything_off_the_allow_list_is_404_with_no_listing(server, path, no_server_errors):
    status, r, body = get(server.port, "GET", path)
    assert status == 404, (path, status)
    assert SECRET.encode() not in body and b"<" not in body and len(body) < 200
    assert r.getheader("Content-Type").startswith("text/plain")


ODD = [
    ("GET", "/%00", 400),
    ("GET", "/bundle/manifest.json%00", 400),
    ("GET", "/bundle/manifest.json%00.png", 400),
    ("GET", "/%ff", 400),
    ("GET", "/bundle/%ff%fe", 400),
    ("GET", "/%C0%AF", 400),
    ("GET", "/%", 404),
    ("GET", "/%zz", 404),
    ("GET", "/" + "a" * 5000, 414),
    ("GET", "/bundle/" + "../" * 2000 + "etc/passwd", 414),
    ("GET", "/" + "a" * 70000, 414),
    ("GET", "/bundle/..%2f..%2fpyproject.toml", 404),
    ("GET", "/bundle\\manifest.json", 400),
    ("GET", "/js/..\\..\\..\\pyproject.toml", 400),
    ("GET", "/bundle/%5cmanifest.json", 400),
    ("GET", "/bundle/%0d%0aX-Evil:%201", 400),
    ("GET", "*", 400),
    ("GET", "http://evil.example/bundle/manifest.json", 400),
    ("POST", "/", 405),
    ("POST", "/bundle/manifest.json", 405),
    ("PUT", "/bundle/manifest.json", 405),
    ("DELETE", "/bundle/model.onnx", 405),
    ("PATCH", "/", 405),
    ("OPTIONS", "*", 405),
    ("TRACE", "/", 405),
    ("CONNECT", "/", 405),
    ("PROPFIND", "/", 405),
    ("FOO", "/", 405),
]


@pytest.mark.parametrize("method,path,code", ODD, ids=[f"{m} {p[:40]}" for m, p, _ in ODD])
def test_odd_requests_get_a_short_4xx_and_the_server_keeps_serving(server, method, path, code, no_server_errors):
    # A body it never reads, larger than the socket buffers: closing at once would break the client's send.
    body = b"x" * 8_000_000 if method in ("POST", "PUT") else None
    status, r, text = get(server.port, method, path, body=body)
    assert status == code, (method, path, status, text)
    assert r.getheader("Content-Type").startswith("text/plain") and len(text) < 200 and b"Traceback" not in text
    if code == 405:
        assert r.getheader("Allow") == "GET, HEAD"
    assert get(server.port, "GET", "/")[0] == 200


@pytest.mark.parametrize(
    "data",
    [
        b"GET /\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",  # raw non-ASCII in the path
        b"GET /bundle/manifest.json\x00 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",  # a raw NUL
        b"GET /a b HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello's first bytes
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",  # too many headers
    ],
)
def test_malformed_request_lines_get_a_4xx(server, data, no_server_errors):
    answer = raw(server.port, data.replace(b"{port}", str(server.port).encode()))
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:200]
    assert get(server.port, "GET", "/")[0] == 200


def test_only_loopback_host_names_with_the_servers_port_are_answered(server, no_server_errors):
    port = server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
        assert get(server.port, "GET", "/bundle/manifest.json", host=host)[0] == 200, host
    # A DNS-rebinding page's requests carry its own name; a wrong port is another server.
    for host in (
        "evil.example",
        f"evil.example:{port}",
        f"127.0.0.1.nip.io:{port}",
        f"localhost.:{port}",
        "127.0.0.1:1",
        "localhost",
        "127.0.0.1",
        f"127.0.0.2:{port}",
        f"0.0.0.0:{port}",
        "",
        f"[::1]:{port + 1}",
    ):
        status, r, body = get(server.port, "GET", "/bundle/manifest.json", host=host)
        assert status == 421, (host, status)
        assert b"format" not in body and len(body) < 200 and r.getheader("Content-Type").startswith("text/plain")
    assert get(server.port, "GET", "/", host=None)[0] == 400  # no Host at all
    assert get(server.port, "GET", "/", host=[f"127.0.0.1:{port}", "evil.example"])[0] == 400  # two
    assert get(server.port, "GET", "/", host=["evil.example", f"127.0.0.1:{port}"])[0] == 400


def test_bound_elsewhere_it_also_answers_to_that_exact_host(bundle, no_server_errors):
    server = start(bundle, "0.0.0.0")
    try:
        port = server.port
        assert not server.loopback_only and server.url == f"http://127.0.0.1:{port}/"
        for host in (f"0.0.0.0:{port}", f"127.0.0.1:{port}", f"localhost:{port}"):
            assert get(port, "GET", "/bundle/manifest.json", host=host)[0] == 200, host
        for host in (f"192.0.2.1:{port}", f"evil.example:{port}"):
            assert get(port, "GET", "/bundle/manifest.json", host=host)[0] == 421, host
    finally:
        stop(server)
    assert start(bundle).loopback_only


def test_an_idle_connection_is_closed(bundle):
    assert 0 < DemoHandler.timeout <= 60
    server = start(bundle, idle_timeout=1)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
            t0 = time.monotonic()
            s.sendall(b"GET / HT")  # a request that never finishes
            assert s.recv(100) == b""  # closed by the server, not by our 20 s timeout
            assert 0.8 < time.monotonic() - t0 < 10
        assert get(server.port, "GET", "/")[0] == 200
    finally:
        stop(server)


# --- the CLI and an installed wheel ----------------------------------------------------------------


class Demo:
    """`pipeline demo` in a child process; lines of stdout as they come."""

    def __init__(self, args, env=None, cwd=None, python_path=None):
        code = (
            "import sys, seqship.runtime as r, seqship.pipeline.cli as c; print('modules', r.__file__, c.__file__, flush=True); "
            "c.main()"
        )
        env = {**{k: v for k, v in os.environ.items() if k != "SEQSHIP_ORT_WEB"}, **(env or {})}
        if python_path is not None:
            env["PYTHONPATH"] = str(python_path)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "demo", *map(str, args)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = queue.Queue()
        threading.Thread(
            target=lambda: [self.lines.put(line) for line in self.proc.stdout] + [self.lines.put(None)], daemon=True
        ).start()

    def line(self, timeout=120) -> str | None:
        return self.lines.get(timeout=timeout)

    def serving(self) -> tuple[list[str], int]:
        """(the module paths it imported, the port it serves on); fails with its stderr if it stopped."""
        modules = self.line()
        assert modules and modules.startswith("modules "), self.stop()
        url_line = self.line()
        assert url_line and url_line.startswith("serving "), self.stop()
        return modules.split()[1:], int(url_line.split("http://127.0.0.1:")[1].split("/")[0])

    def stop(self) -> str:
        """Ends it; its stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


def cli_env(tmp_path) -> dict:
    # An empty cache folder and no SEQSHIP_ORT_WEB: what is found is what the test put there.
    cache = tmp_path / "xdg-cache"
    cache.mkdir(exist_ok=True)
    return {"XDG_CACHE_HOME": str(cache), "HOME": str(tmp_path)}


def test_cli_warns_on_stderr_when_bound_to_a_non_loopback_address(bundle, tmp_path):
    need_ort_web()
    demo = Demo(["--bundle", bundle, "--host", "0.0.0.0", "--port", 0], cwd=REPO)
    demo.serving()
    err = demo.stop()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "not a loopback address" in warnings[0], err
    demo = Demo(["--bundle", bundle, "--port", 0], cwd=REPO)
    demo.serving()
    assert "warning" not in demo.stop()


def test_find_ort_web_takes_a_prefix_a_package_or_a_dist_folder_and_says_what_to_install(tmp_path):
    need_ort_web()
    prefix = tmp_path / "prefix"
    (prefix / "node_modules").mkdir(parents=True)
    (prefix / "node_modules" / "onnxruntime-web").symlink_to(ORT_PACKAGE, target_is_directory=True)
    dist = (ORT_PACKAGE / "dist").resolve()
    for folder in (prefix, prefix / "node_modules" / "onnxruntime-web", ORT_PACKAGE / "dist"):
        assert find_ort_web(folder) == dist
    assert find_ort_web() == dist  # the checkout's node_modules
    with pytest.raises(DemoError) as e:
        find_ort_web(tmp_path / "empty")
    assert "npm install --prefix " in str(e.value) and f"onnxruntime-web@{ORT_VERSION}`" in str(e.value)
    assert str(tmp_path / "empty") in str(e.value)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """seqship's wheel pip-installed into a bare folder: (wheel, folder)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    work = tmp_path_factory.mktemp("installed")
    target = work / "site"
    out = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return wheel, target


def test_the_wheel_carries_the_demo_page_and_the_browser_javascript(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        "seqship/runtime/js/package.json",
        "seqship/runtime/js/web/index.html",
        "seqship/runtime/js/web/app.js",
        *(f"seqship/runtime/js/src/{p.name}" for p in (JS / "src").glob("*.js")),
    }
    assert wanted <= names, wanted - names
    assert not [n for n in names if "node_modules" in n or "/cpp/" in n]


def test_the_demo_runs_from_an_installed_wheel_outside_the_checkout(installed, bundle, tmp_path, no_server_errors):
    need_ort_web()
    _, site = installed
    demo = Demo(
        ["--bundle", bundle, "--port", 0, "--ort-web", ORT_PACKAGE / "dist"],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        python_path=site,
    )
    try:
        modules, port = demo.serving()
        assert all(Path(m).is_relative_to(site) for m in modules), modules  # not the checkout's code
        for url, file in [
            ("/", site / "seqship/runtime/js/web/index.html"),
            ("/app.js", site / "seqship/runtime/js/web/app.js"),
            ("/js/browser.js", site / "seqship/runtime/js/src/browser.js"),
            ("/js/predictor.js", site / "seqship/runtime/js/src/predictor.js"),
            ("/ort/ort.min.js", ORT_PACKAGE / "dist" / "ort.min.js"),
            ("/bundle/manifest.json", bundle / "manifest.json"),
            ("/bundle/model.onnx", bundle / "model.onnx"),
        ]:
            status, _, body = get(port, "GET", url, host=f"localhost:{port}")
            assert status == 200 and body == file.read_bytes(), url
        assert get(port, "GET", "/bundle/.env")[0] == 404
    finally:
        demo.stop()


def test_the_installed_demo_says_what_to_install_then_finds_it_in_the_cache_or_the_env(installed, bundle, tmp_path):
    need_ort_web()
    _, site = installed
    env = cli_env(tmp_path)
    cache = Path(env["XDG_CACHE_HOME"]) / "seqship" / "ort-web"
    demo = Demo(["--bundle", bundle, "--port", 0], env=env, cwd=tmp_path, python_path=site)
    assert demo.line().startswith("modules ") and demo.line() is None
    err = demo.stop()
    assert demo.proc.returncode == 1
    assert f"npm install --prefix {cache} onnxruntime-web@{ORT_VERSION}`" in err, err
    assert "--ort-web" in err and "SEQSHIP_ORT_WEB" in err

    # What that command leaves behind, then the demo run exactly as before: found without being told.
    (cache / "node_modules").mkdir(parents=True)
    (cache / "node_modules" / "onnxruntime-web").symlink_to(ORT_PACKAGE, target_is_directory=True)
    demo = Demo(["--bundle", bundle, "--port", 0], env=env, cwd=tmp_path, python_path=site)
    try:
        _, port = demo.serving()
        assert get(port, "GET", "/ort/ort.min.js")[2] == (ORT_PACKAGE / "dist" / "ort.min.js").read_bytes()
    finally:
        demo.stop()

    shutil.rmtree(cache)
    demo = Demo(
        ["--bundle", bundle, "--port", 0],
        env={**env, "SEQSHIP_ORT_WEB": str(ORT_PACKAGE)},
        cwd=tmp_path,
        python_path=site,
    )
    try:
        _, port = demo.serving()
        assert get(port, "GET", "/ort/ort.min.js")[0] == 200
    finally:
        demo.stop()
