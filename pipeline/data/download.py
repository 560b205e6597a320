"""The download cache: fetch a dataset's public source, verify every file, install it into the cache whole.

Several processes may share one cache (two `pipeline run`s, a test suite on two workers). A download
holds an exclusive `flock` on `<cache>/.<dataset>.lock` from its cache check to its install, so a
second process waits, then finds the verified copy and uses it instead of downloading again. Files are
assembled in a `runtime.fsio.temp_dir` and put in place by `replace_dir`, so `<cache>/<dataset>/` is
always absent, the old verified copy, or the new one. Only temporaries whose writer is certainly dead
are swept (`sweep_partials`); another process's download in progress is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

from seqship.pipeline.data.registry import CACHE_DIR_ENV, DATA_DIR_ENV, DOWNLOAD_RECORD, DataError, Dataset, Download
from seqship.runtime.bundle import sha256_file
from seqship.runtime.fsio import FileSafetyError, describe_os_error, replace_dir, sweep_partials, temp_dir

try:
    import fcntl
except ImportError:  # Windows: no flock; the install is still atomic, two processes may just both download
    fcntl = None

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 200 << 20


def default_cache_dir() -> Path:
    """$SEQSHIP_CACHE_DIR, else $XDG_CACHE_HOME/seqship, else ~/.cache/seqship."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seqship"


def lock_path(cache: Path, name: str) -> Path:
    """The lock file that serialises downloads of one dataset into one cache."""
    return cache / f".{name}.lock"


@contextlib.contextmanager
def cache_lock(cache: Path, name: str) -> Iterator[None]:
    """Hold the dataset's download lock in `cache`; wait (and say so) while another process holds it."""
    path = lock_path(cache, name)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666
        )  # umask applies: a shared cache stays shared
    except OSError as e:
        raise DataError(
            f"download cache: {describe_os_error(path, e, 'create')}; or set {CACHE_DIR_ENV} to a folder you can write"
        ) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another process is downloading %s into %s; waiting for it", name, cache)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:  # e.g. a network file system without locks: the install is still atomic
                log.warning("cannot lock %s (%s); downloading without a lock", path, e.strerror or e)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, as deleting it would race with a waiting process


def cached(target: Path, dl: Download) -> bool:
    """Whether `target` is a finished, verified download (checked again, file by file)."""
    record = target / DOWNLOAD_RECORD
    if not record.is_file():
        return False
    try:
        stored = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    names = [name for _, name in dl.members]
    if not isinstance(stored, dict) or stored.get("files") != names or not all((target / n).is_file() for n in names):
        return False
    # The registry's digests where it has them; else (an archive checked by its md5) those the download recorded.
    digests = dict(dl.sha256) or stored.get("sha256") or {}
    try:
        return set(digests) == set(names) and all(sha256_file(target / n) == digests[n] for n in names)
    except OSError:
        return False


def fetch(url: str, name: str, folder: str) -> bytes:
    """The bytes at `url` (at most MAX_DOWNLOAD_BYTES); a DataError that says how to work offline if it fails."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            payload = r.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise DataError(
            f"dataset {name!r}: no local copy and the download from {url} failed ({e}). "
            f"Offline? Pass --data-dir DIR or set {DATA_DIR_ENV}=DIR, where DIR holds {folder}/"
        ) from None
    if len(payload) > MAX_DOWNLOAD_BYTES:
        raise DataError(f"{url}: larger than {MAX_DOWNLOAD_BYTES >> 20} MiB; refusing it")
    return payload


def unpack(payload: bytes, dl: Download, url: str) -> dict[str, bytes]:
    """The bytes of each wanted member of a downloaded file or archive, by stored name (nothing touches the disk)."""
    wanted = dict(dl.members)
    too_big = f"unpacks to more than {MAX_DOWNLOAD_BYTES >> 20} MiB; refusing it"
    try:
        if dl.kind == "file":
            return {name: payload for name in wanted.values()}
        if dl.kind == "zip":
            with zipfile.ZipFile(io.BytesIO(payload)) as z:
                names = set(z.namelist())
                out = {}
                for member, name in wanted.items():
                    if member not in names:
                        raise DataError(f"{url}: archive lacks {member}")
                    if z.getinfo(member).file_size > MAX_DOWNLOAD_BYTES:
                        raise DataError(f"{url}: {member} {too_big}")
                    out[name] = z.read(member)
                return out
        if dl.kind == "tar.gz":
            with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as t:
                out = {}
                for member, name in wanted.items():
                    try:
                        info = t.getmember(member)
                    except KeyError:
                        raise DataError(f"{url}: archive lacks {member}") from None
                    f = t.extractfile(info) if info.isfile() else None
                    if f is None:
                        raise DataError(f"{url}: {member} is not a regular file in the archive")
                    if info.size > MAX_DOWNLOAD_BYTES:
                        raise DataError(f"{url}: {member} {too_big}")
                    out[name] = f.read()
                return out
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        zlib.error,
        EOFError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as e:
        raise DataError(f"{url}: not a readable {dl.kind} archive ({type(e).__name__}: {e})") from None
    raise DataError(f"internal error: unknown download kind {dl.kind!r}")


def verify(payload: bytes, dl: Download, url: str) -> dict[str, bytes]:
    """The files to store, checked against the published md5 and the registry's sha256; refused on any mismatch."""
    if dl.archive_md5 is not None:
        digest = hashlib.md5(payload).hexdigest()
        if digest != dl.archive_md5:
            raise DataError(f"{url}: md5 {digest}, expected the published {dl.archive_md5}; refusing it")
    files = unpack(payload, dl, url)
    if dl.transcode:
        try:
            files = {n: b.decode(dl.transcode).encode("utf-8") for n, b in files.items()}
        except UnicodeDecodeError as e:
            raise DataError(f"{url}: not {dl.transcode} text as expected ({e}); refusing it") from None
    for name, digest in dl.sha256:
        got = hashlib.sha256(files[name]).hexdigest()
        if got != digest:
            raise DataError(f"{url}: {name} has sha256 {got}, expected {digest}; refusing it")
    return files


def refuse_unless_ours(target: Path) -> None:
    """A DataError unless <cache>/<name> is absent or a download seqship made (it holds our record): the cache
    may point at a folder of the user's, and a folder we did not create is never replaced."""
    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_dir() or not (target / DOWNLOAD_RECORD).is_file():
        raise DataError(
            f"download cache: {target} exists and is not a download seqship made (it has no {DOWNLOAD_RECORD}); "
            f"seqship never replaces what it did not create: move it away, or set {CACHE_DIR_ENV} to another folder"
        )


def install(files: dict[str, bytes], record: dict, cache: Path, name: str) -> Path:
    """Write verified files and their record into a temporary folder, then put it at <cache>/<name> whole."""
    target = cache / name
    refuse_unless_ours(target)
    try:
        tmp = temp_dir(cache, name)
    except FileSafetyError as e:
        raise DataError(f"download cache: {e}; or set {CACHE_DIR_ENV} to a folder you can write") from None
    try:
        for stored, data in files.items():
            (tmp / stored).write_bytes(data)
        (tmp / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        replace_dir(tmp, target)  # fsyncs every file, then renames: target is old-whole or new-whole
    except OSError as e:
        raise DataError(
            f"download cache: {describe_os_error(tmp, e)}; or set {CACHE_DIR_ENV} to another folder"
        ) from None
    except FileSafetyError as e:
        raise DataError(f"download cache: {e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def download_dataset(ds: Dataset, cache: Path) -> Path:
    """<cache>/<dataset>/ holding the dataset's verified public files: from the cache, else downloaded now."""
    dl = ds.download
    if dl is None:
        raise DataError(
            f"dataset {ds.name!r}: no local copy, and it has no public download. "
            f"Pass --data-dir DIR or set {DATA_DIR_ENV}=DIR, where DIR holds {ds.folder}/"
        )
    target = cache / ds.name
    if cached(target, dl):
        return target
    with cache_lock(cache, ds.name):
        if cached(target, dl):  # another process finished this download while we waited for the lock
            log.info("using %s, downloaded meanwhile by another process", target)
            return target
        refuse_unless_ours(target)  # before the download, not after it
        for stale in sweep_partials(cache):  # only temporaries whose writer is certainly dead
            log.info("removed %s, left by a download that was killed", stale)
        url = os.environ.get(dl.env_var(ds.name)) or dl.url
        log.info("downloading %s from %s into %s", ds.name, url, target)
        files = verify(fetch(url, ds.name, ds.folder), dl, url)
        record = {
            "dataset": ds.name,
            "url": url,
            "files": [n for _, n in dl.members],
            "sha256": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
        }
        return install(files, record, cache, ds.name)
