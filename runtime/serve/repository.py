"""A model repository in Triton's layout, `DIR/<model>/<version>/` holding a bundle, kept in step with the server.

Modes (Triton's names): `none` loads every version at start-up and never changes; `poll` looks again every
--repository-poll-secs, loads each new version that is complete and passes every load check, and unloads
each version whose folder is gone; `explicit` loads at start-up, then changes only on a repository call
(index, load, unload, over HTTP and gRPC).

A version folder is *complete* when its manifest.json reads as a seqship manifest and every file it lists is
there with the listed size; a poll loads it only once nothing in it changed since the poll before (a copy
still under way is waited for, never loaded half-written). Loading is Predictor.load's, on a worker thread:
every file's sha256, the model's metadata, and the pin when --repository-pins names the model. A version
that fails is refused, logged and counted in `seqship_repository_load_failures_total`, and not tried again
until its files change; the versions already loaded keep serving. Every loaded version is served; the
unversioned paths answer from the newest. An unloaded version stops taking requests at once and is closed
once the requests it holds are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Callable

from seqship.runtime.bundle import MANIFEST, bundle_digest, check_pin, read_manifest, safe_member
from seqship.runtime.errors import SeqshipError
from seqship.runtime.predictor import Predictor
from seqship.runtime.serve.protocol import HTTPError, Limits, Models, Served

log = logging.getLogger(__name__)

MODES = ("none", "poll", "explicit")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # as server.NAME: one URL path segment
VERSION = re.compile(r"[1-9][0-9]{0,17}")  # a positive integer, as Triton's version folders
MAX_PIN_FILE = 1 << 20


class RepositoryError(SeqshipError):
    """A model repository that cannot be served: a version that does not load at start-up, a bad pin file."""


def signature(folder: Path) -> tuple:
    """What a version folder holds now: each file's path, size, modification time and change time (a copy in
    progress changes it). The change time is the one a copy tool cannot set back: one that writes files at
    their full size first and their content later, then restores the source's modification times, still
    changes it (and a file replaced by a rename changes its inode)."""
    out = []
    for dirpath, _, files in os.walk(folder):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            path = os.path.relpath(os.path.join(dirpath, f), folder)
            out.append((path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(sorted(out))


def incomplete(folder: Path) -> str | None:
    """Why a version folder is not complete yet (no manifest, or a listed file missing or of another size), or
    None when it is."""
    try:
        manifest = read_manifest(folder)
    except SeqshipError as e:
        return str(e)
    for name, entry in manifest["files"].items():
        try:
            path = safe_member(folder, name)
            size = path.stat().st_size if path.is_file() else None
        except (SeqshipError, OSError) as e:
            return str(e)
        if size != entry["bytes"]:
            return f"{path}: {'missing' if size is None else f'{size} bytes'}, the manifest lists {entry['bytes']}"
    return None


def read_pins(path: Path | None) -> dict[str, set[str]] | None:
    """--repository-pins: lines `MODEL SHA256` (several per model allowed; # comments); None: no pins."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PIN_FILE + 1)
    except OSError as e:
        raise RepositoryError(f"--repository-pins {path}: cannot be read ({e.strerror})") from None
    if len(raw) > MAX_PIN_FILE:
        raise RepositoryError(f"--repository-pins {path}: larger than 1 MiB; it holds one `MODEL SHA256` a line")
    pins: dict[str, set[str]] = {}
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or not MODEL_NAME.fullmatch(words[0]):
            raise RepositoryError(f"--repository-pins {path}:{n}: expected `MODEL SHA256`, got {line.strip()[:80]!r}")
        try:
            pins.setdefault(words[0], set()).add(check_pin(words[1]))
        except SeqshipError as e:
            raise RepositoryError(f"--repository-pins {path}:{n}: {e}") from None
    return pins


class Repository:
    """DIR/<model>/<version>/ bundles, loaded into `models` and kept in step with the folder (see the module)."""

    def __init__(
        self,
        root: Path,
        mode: str = "none",
        poll_s: float = 5.0,
        pins: Path | None = None,
        load: Callable[[Path, str | None], Predictor] = Predictor.load,
    ):
        self.root, self.mode, self.poll_s, self.pins_file, self._load = Path(root), mode, poll_s, pins, load
        self.models = Models()
        self.refused: dict[tuple[str, int], tuple[tuple, str]] = {}  # (model, version) -> (signature, reason)
        self.seen: dict[tuple[str, int], tuple] = {}  # (model, version) -> its signature at the last poll
        self.limits: Limits | None = None
        self.metrics = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    # --------------------------------------------------------------------------------------------- the folder

    def scan(self) -> dict[str, dict[int, Path]]:
        """model -> version -> folder, for every model and version folder named as Triton names them."""
        found: dict[str, dict[int, Path]] = {}
        try:
            models = list(os.scandir(self.root))
        except OSError as e:  # gone (an unmounted volume?) or unreadable: not "no models", which would unload all
            raise HTTPError(
                503,
                f"the model repository {self.root} cannot be read ({e.strerror}); the versions loaded keep serving, "
                "and nothing is loaded or unloaded until it can",
            ) from None
        for m in models:
            if not (m.is_dir() and MODEL_NAME.fullmatch(m.name)):
                continue
            with contextlib.suppress(FileNotFoundError):  # a model folder removed while listed: no versions
                versions = {
                    int(v.name): Path(v.path) for v in os.scandir(m.path) if v.is_dir() and VERSION.fullmatch(v.name)
                }
                if versions:
                    found[m.name] = versions
        return found

    def load_version(self, name: str, version: int, folder: Path) -> Served:
        """One version, loaded and verified (on a worker thread once serving); raises SeqshipError."""
        pins = read_pins(self.pins_file)
        pin = None
        if pins is not None:
            digest = bundle_digest(folder)  # then pinned to the load: what is checked is what is read
            if digest not in pins.get(name, ()):
                listed = ", ".join(sorted(pins.get(name, ()))) or "none"
                raise RepositoryError(
                    f"{folder}: bundle digest {digest} is not pinned for model {name!r} in --repository-pins "
                    f"{self.pins_file} (pinned: {listed}); add `{name} {digest}` there if you trust it"
                )
            pin = digest
        return Served(name, folder, self._load(folder, pin), version=version)

    def load_all(self) -> Models:
        """Every version at start-up, before anything listens: any that fails (or, unless polling, is not
        complete) stops the start with an error naming it."""
        if not self.root.is_dir():
            raise RepositoryError(
                f"--model-repository {self.root}: not a folder; give DIR holding DIR/<model>/<version>/"
            )
        read_pins(self.pins_file)  # a bad pin file is one error before any bundle is read
        found = self.scan()
        for name, versions in sorted(found.items()):
            for version, folder in sorted(versions.items()):
                reason = incomplete(folder)
                if reason is not None:
                    if self.mode == "poll":
                        log.warning("%s: not complete yet, a poll loads it once it is: %s", folder, reason)
                        continue
                    raise RepositoryError(f"{folder}: not a complete bundle ({reason})")
                try:
                    self.models.add(self.load_version(name, version, folder))
                except SeqshipError as e:
                    raise RepositoryError(f"model {name} version {version}: {e}") from None
        if not self.models and self.mode == "none":
            raise RepositoryError(
                f"--model-repository {self.root}: no model to serve; it must hold DIR/<model>/<version>/{MANIFEST} "
                "(a version is a positive integer)"
            )
        return self.models

    # --------------------------------------------------------------------------------------------- serving

    def start(self, limits: Limits, metrics) -> None:
        """Once the server runs (on its event loop): count loads, and poll in poll mode."""
        from prometheus_client import Counter, Gauge

        self.limits, self.metrics = limits, metrics
        r = metrics.registry
        self.failures = Counter(
            "seqship_repository_load_failures",
            "Model versions in the repository refused (a load check failed); the versions loaded keep serving.",
            ["model"],
            registry=r,
        )
        self.loads = Counter(
            "seqship_repository_loads",
            "Model versions loaded from the repository while serving.",
            ["model"],
            registry=r,
        )
        # livemax: under --workers every worker serves the same versions; one series per model, not one per worker
        self.versions_gauge = Gauge(
            "seqship_model_versions", "Versions served, by model.", ["model"], registry=r, multiprocess_mode="livemax"
        )
        self._count_versions()
        if self.mode == "poll":
            self._spawn(self._poll(), "repository-poll")

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count_versions(self, names=()) -> None:
        for name in {*self.models, *names}:
            self.versions_gauge.labels(name).set(len(self.models.versions(name)))

    async def stop(self, timeout_s: float) -> None:
        """Stop polling, and finish closing the versions being unloaded within timeout_s (what is left of the
        drain); a version still holding requests then is closed without waiting for them."""
        for task in list(self._tasks):
            if task.get_name() == "repository-poll":
                task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.sync(settled=True)
            except Exception as e:  # noqa: BLE001 - a poll that fails (the folder unreadable) must not stop the next
                log.error("polling the model repository %s failed: %s", self.root, e)

    async def sync(self, only: str | None = None, settled: bool = False) -> list[str]:
        """Load the versions on disk not served yet and unload those whose folder is gone (of every model, or
        of `only`); returns why each version that could not be loaded was refused. settled: load a folder
        only once nothing in it changed since the previous call (a poll), and never retry one refused
        unchanged."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(None, self.scan)
            problems = []
            names = [only] if only is not None else sorted(set(found) | set(self.models))
            for name in names:
                on_disk = found.get(name, {})
                for version in [v for v in self.models.versions(name) if v not in on_disk]:
                    self._unload(name, version, "its folder is gone")
                for version, folder in sorted(on_disk.items()):
                    if version in self.models.versions(name):
                        continue
                    problem = await self._try_load(name, version, folder, settled)
                    if problem:
                        problems.append(problem)
            self._count_versions(names)
            return problems

    async def _try_load(self, name: str, version: int, folder: Path, settled: bool) -> str | None:
        loop, key = asyncio.get_running_loop(), (name, version)
        # The pins file is part of what a version was judged on: a refusal for a missing pin ends once it is added.
        sig = (await loop.run_in_executor(None, signature, folder), self._pins_stamp())
        if settled and key in self.refused and self.refused[key][0] == sig:
            return None  # refused as it is now; tried again once its files change
        reason = await loop.run_in_executor(None, incomplete, folder)
        if reason is not None:
            if self.seen.get(key) != sig:
                log.info("%s: not complete yet (%s)", folder, reason)
            self.seen[key] = sig
            return None if settled else f"model {name} version {version}: not a complete bundle ({reason})"
        if settled and self.seen.get(key) != sig:
            self.seen[key] = sig  # complete, but was it still changing? loaded at the next poll if not
            return None
        try:
            served = await loop.run_in_executor(None, self.load_version, name, version, folder)
        except SeqshipError as e:
            self.refused[key] = (sig, str(e))
            self.failures.labels(name).inc()
            log.error("model %s version %s refused, the versions loaded keep serving: %s", name, version, e)
            return f"model {name} version {version}: {e}"
        self.refused.pop(key, None)
        self.seen.pop(key, None)
        served.batcher = self._batcher(served)
        self.models.add(served)
        self.loads.labels(name).inc()
        log.warning(
            "model %s version %s loaded from %s (bundle sha256 %s)", name, version, folder, served.predictor.digest
        )
        return None

    def _pins_stamp(self) -> tuple | None:
        """The pins file's size and modification time (None: no pins file, or none readable now)."""
        try:
            st = os.stat(self.pins_file) if self.pins_file is not None else None
        except OSError:
            return None
        return None if st is None else (st.st_size, st.st_mtime_ns)

    def _batcher(self, served: Served):
        from seqship.runtime.serve.batching import Batcher

        batcher = Batcher(served, self.limits, self.metrics)
        batcher.start()
        return batcher

    def _unload(self, name: str, version: int, why: str) -> None:
        served = self.models.remove(name, version)
        log.warning("model %s version %s unloaded (%s); it answers the requests it holds", name, version, why)
        self._spawn(self._close(served), f"unload-{name}-{version}")

    async def _close(self, served: Served) -> None:
        """Close an unloaded version once no request holds it (at most --drain-timeout-s)."""
        deadline = asyncio.get_running_loop().time() + self.limits.drain_timeout_s
        while served.leases and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await served.batcher.close(max(0.0, deadline - asyncio.get_running_loop().time()))

    # --------------------------------------------------------------------------------------------- the extension

    def _explicit(self, call: str) -> None:
        if self.mode != "explicit":
            raise HTTPError(
                503,
                f"repository {call} is off: this server runs --model-control-mode {self.mode}; start it with "
                "--model-control-mode explicit to load and unload models by request",
            )

    def index(self, ready: bool = False) -> list[dict]:
        """Triton's repository index: every version on disk or served, its state and why it is not ready."""
        found = self.scan()
        rows = []
        for name in sorted(set(found) | set(self.models)):
            for version in sorted(set(found.get(name, {})) | set(self.models.versions(name))):
                if version in self.models.versions(name):
                    rows.append({"name": name, "version": str(version), "state": "READY", "reason": ""})
                elif not ready:
                    reason = self.refused.get((name, version), (None, "not loaded"))[1]
                    rows.append({"name": name, "version": str(version), "state": "UNAVAILABLE", "reason": reason})
        return rows

    async def load(self, name: str, parameters: list[str] = ()) -> None:
        """Load (or bring in step with its folder) one model: every complete version not served yet is loaded,
        versions whose folder is gone are unloaded; a 400 names each version that failed, or says that none
        serves. Triton's load parameters (a config, files sent with the request) are refused: a version is
        what its folder holds, checked as every other."""
        self._explicit("load")
        if not MODEL_NAME.fullmatch(name) or not (self.root / name).is_dir():
            raise HTTPError(404, f"no model {name[:80]!r} in the repository {self.root}")
        if parameters:
            raise HTTPError(
                400,
                f"model {name}: load parameters {[p[:40] for p in parameters[:4]]} are not supported: seqship loads "
                f"each version from its folder {self.root / name}/<version>/ as it is; copy the bundle there",
            )
        problems = await self.sync(only=name)
        if problems:
            raise HTTPError(400, "; ".join(problems))
        if not self.models.versions(name):
            raise HTTPError(
                400,
                f"model {name}: no version to serve: no folder {self.root / name}/<version>/ (a positive integer) "
                "holds a complete bundle",
            )

    async def unload(self, name: str) -> None:
        """Unload every version of one model; each answers the requests it holds first."""
        self._explicit("unload")
        if name not in self.models:
            raise HTTPError(404, f"model {name[:80]!r} is not loaded")
        async with self._lock:
            for version in list(self.models.versions(name)):
                self._unload(name, version, "unload requested")
            self._count_versions([name])
