"""One pin in every command that loads a bundle: --expect-sha256 or SEQSHIP_EXPECT_SHA256, read by one
function (cli.trusted_digests) the same way in predict, verify, inspect, bench, demo and serve; and
`pipeline verify` runs the bytes it hashed (each bundle file is opened once, seen by inotify)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import invoke

PIPELINE = [sys.executable, "-m", "seqship.pipeline.cli"]
WRONG = "0" * 64


def digest_of(bundle) -> str:
    return hashlib.sha256((Path(bundle) / "manifest.json").read_bytes()).hexdigest()


def start(argv: list[str], env: dict, ready: str = "serving", timeout: float = 120) -> tuple[int | None, str]:
    """Run a server command until it says `ready` (then SIGTERM it: returns (None, output)) or exits
    (returns (exit code, output))."""
    proc = subprocess.Popen(
        [*PIPELINE, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )
    out = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=30)
                return proc.returncode, "".join(out)
            out.append(line)
            if ready in line:
                return None, "".join(out)
        raise AssertionError(f"{argv}: neither ready nor exited: {''.join(out)}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def commands(bundle: str, texts: str = "texts.txt") -> dict[str, list[str]]:
    """Every command that loads a bundle, as argv without the pin."""
    return {
        "predict": ["predict", "--bundle", bundle, "Nguyen"],
        "inspect": ["inspect", bundle],
        "verify": ["verify", "--bundle", bundle],
        "bench": [
            *("bench", "--bundle", bundle, "--texts", texts),
            *("--repeats", "1", "--latency-texts", "3", "--bulk-texts", "20", "--cold-repeats", "1"),
        ],
        "demo": ["demo", "--bundle", bundle, "--port", "0"],
        "serve": ["serve", "--bundle", bundle, "--port", "0"],
    }


@pytest.mark.parametrize("command", list(commands("B")))
def test_a_wrong_pin_in_the_environment_refuses_the_bundle_in_every_command(bundle_copy, command):
    argv = commands(str(bundle_copy))[command]
    code, out = start(argv, {"SEQSHIP_EXPECT_SHA256": WRONG})
    assert code == 1, (command, out)
    assert f"is not the trusted {WRONG}" in out and digest_of(bundle_copy) in out, (command, out)
    # the option says the same, and wins over the variable
    code, out = start([*argv, "--expect-sha256", WRONG], {"SEQSHIP_EXPECT_SHA256": digest_of(bundle_copy)})
    assert code == 1 and "is not the trusted" in out, (command, out)


@pytest.mark.parametrize("command", list(commands("B")))
@pytest.mark.parametrize(
    "value, message",
    [
        ("", "SEQSHIP_EXPECT_SHA256 is set but empty"),
        (" \t", "SEQSHIP_EXPECT_SHA256 is set but empty"),
        ("abc", "64 hex"),
        ("g" * 64, "64 hex"),
    ],
)
def test_an_empty_or_malformed_pin_is_refused_before_the_bundle_is_read(tmp_path, command, value, message):
    # tmp_path holds no bundle at all: the pin is refused first, whatever the folder
    code, out = start(commands(str(tmp_path / "nowhere"))[command], {"SEQSHIP_EXPECT_SHA256": value})
    assert code in (1, 2) and message in out, (command, out)


@pytest.mark.slow
def test_the_right_pin_in_the_environment_loads_in_every_command(bundle_copy, tmp_path):
    pin = digest_of(bundle_copy)
    (tmp_path / "texts.txt").write_text("Nguyen\nSchmidt\nRossi\n")
    for command, argv in commands(str(bundle_copy), str(tmp_path / "texts.txt")).items():
        for env in ({"SEQSHIP_EXPECT_SHA256": pin}, {"SEQSHIP_EXPECT_SHA256": pin.upper()}):
            if command in ("bench",) and env["SEQSHIP_EXPECT_SHA256"] != pin:
                continue  # one bench run is enough: it is the slowest command
            if command in ("demo", "serve"):
                code, out = start(argv, env)
                assert code is None, (command, out)
            else:
                result = invoke(*argv, env=env)
                assert result.exit_code == 0, (command, result.output)


def test_serve_pins_several_bundles_one_digest_each_in_order(bundle_copy, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(bundle_copy, other)
    m = json.loads((other / "manifest.json").read_text())
    m["note"] = "a second bundle"
    (other / "manifest.json").write_text(json.dumps(m))
    a, b = digest_of(bundle_copy), digest_of(other)
    argv = ["serve", "--bundle", f"a={bundle_copy}", "--bundle", f"b={other}", "--port", "0"]
    code, out = start(argv, {"SEQSHIP_EXPECT_SHA256": f"{a} {b}"})
    assert code is None, out
    code, out = start([*argv, "--expect-sha256", a, "--expect-sha256", b], {})
    assert code is None, out
    code, out = start(argv, {"SEQSHIP_EXPECT_SHA256": f"{b} {a}"})  # swapped: the first bundle is refused
    assert code == 1 and f"is not the trusted {b}" in out, out
    code, out = start(argv, {"SEQSHIP_EXPECT_SHA256": a})  # one digest for two bundles: which one?
    assert code == 2 and "SEQSHIP_EXPECT_SHA256 gives 1 digest(s) for 2 bundle(s)" in out, out
    code, out = start([*argv, "--expect-sha256", a], {})
    assert code == 2 and "--expect-sha256 gives 1 digest(s) for 2 bundle(s)" in out, out


def test_a_pinned_bundle_reached_through_odd_spellings_is_the_same_bundle(bundle_copy, monkeypatch):
    pin = digest_of(bundle_copy)
    monkeypatch.chdir(bundle_copy.parent)
    link = bundle_copy.parent / "linked"
    link.symlink_to(bundle_copy.name)
    for spelling in ("bundle", "bundle/", f"bundle/../{bundle_copy.name}", "./linked", str(link.resolve())):
        ok = invoke("predict", "--bundle", spelling, "Nguyen", env={"SEQSHIP_EXPECT_SHA256": pin})
        assert ok.exit_code == 0, (spelling, ok.output)
        bad = invoke("inspect", spelling, env={"SEQSHIP_EXPECT_SHA256": WRONG})
        assert bad.exit_code == 1 and "not the trusted" in bad.output, (spelling, bad.output)


# --- verify runs what it hashed -----------------------------------------------------------------------

IN_OPEN = 0x20


class OpenCounter:
    """Linux inotify on a folder: how many times each file in it was opened, by any process (Python,
    libtorch, onnxruntime, the engines' worker processes alike)."""

    def __init__(self, folder: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, ctypes.get_errno()
        assert self.libc.inotify_add_watch(self.fd, str(folder).encode(), IN_OPEN) >= 0, ctypes.get_errno()

    def counts(self) -> dict[str, int]:
        seen: dict[str, int] = {}
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            i = 0
            while i < len(buf):
                _, mask, _, size = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16 : i + 16 + size].rstrip(b"\0").decode()
                if mask & IN_OPEN and name:
                    seen[name] = seen.get(name, 0) + 1
                i += 16 + size
        return seen

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.slow
def test_verify_opens_each_bundle_file_once_and_runs_those_bytes(bundle_copy):
    """What verify hashes is what it runs: if it opened a file again (TorchScript, onnxruntime, the
    tokenizer, the other engines' processes), a file swapped in between would be run, and model.pt
    unpickled, under a report that says every hash matched."""
    counter = OpenCounter(bundle_copy)
    try:
        result = invoke("verify", "--bundle", str(bundle_copy), env={"SEQSHIP_EXPECT_SHA256": digest_of(bundle_copy)})
        opened = counter.counts()
    finally:
        counter.close()
    assert result.exit_code == 0, result.output
    listed = set(json.loads((bundle_copy / "manifest.json").read_text())["files"])
    assert opened == dict.fromkeys(listed | {"manifest.json"}, 1), opened
