"""Writing files and folders so that a crash, a full disk or a second process never leaves a
half-written file under a final name, and nothing but a regular file is ever replaced.

Every file seqship writes goes through `atomic_write` (or `write_text_atomic`/`write_json_atomic`; `partial_path` + `commit_partial` for
a library that must write by name),
every stage folder or cache entry through `temp_dir` + `replace_dir`:

- the data goes to a temporary name beside the target (`.<name>.<host>-<pid>.<random>.partial`),
  is flushed and fsynced, renamed over the target, and the folder is fsynced, so after a power loss
  the target is either the old file or the new one, whole;
- only a missing path or a regular file is replaced. A symlink is followed (its target is replaced,
  the link kept); a FIFO or character device (``/dev/null``, ``/dev/stdout``) is written into, as a
  stream; a directory, socket or block device is refused with `FileSafetyError`;
- a replaced file keeps its permission bits; a new file gets ``0o666 & ~umask`` (like ``open()``);
- temporaries left by a killed process are swept by `sweep_partials` (the next run calls it): only
  those whose writer -- same host, pid no longer alive -- is certainly gone.

Standard library only: the runtime uses it for bulk output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path
from typing import IO, Iterator

from seqship.runtime.errors import SeqshipError

PARTIAL = ".partial"


class FileSafetyError(SeqshipError):
    """A path cannot be written safely (not a regular file, a read-only folder, a full disk)."""


class FileTooLargeError(SeqshipError):
    """A file holds more bytes than seqship reads of it (counted while reading: a device, a FIFO or a
    /proc file says its size is 0)."""


_READ_CHUNK = 1 << 20


def read_capped(path: str | os.PathLike, max_bytes: int, hint: str = "") -> bytes:
    """A whole file's bytes, when it holds at most max_bytes; a FileTooLargeError naming it (and `hint`,
    what to do) as soon as more than that has been read. Never trusts st_size, and never asks for more
    memory than max_bytes plus one chunk (`/dev/zero`, an endless FIFO). OSError as open() raises it."""
    with open(path, "rb") as f:
        return read_stream_capped(f, max_bytes, str(path), hint)


def read_stream_capped(stream: IO[bytes], max_bytes: int, name: str, hint: str = "") -> bytes:
    """All of a binary stream (stdin, a pipe) up to max_bytes, counted as read; else a FileTooLargeError."""
    chunks, size = [], 0
    while chunk := stream.read(min(_READ_CHUNK, max_bytes + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            shown = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes:,} bytes"
            raise FileTooLargeError(f"{name}: more than {shown}, the most seqship reads of it{hint and '; '}{hint}")
    return b"".join(chunks)


def refuse_same_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A FileSafetyError when writing `dst` would replace or write into the file `src` is, by any name: the
    same path spelled otherwise (`./x`, `a/../x`), a symlink to it, a hard link, /dev/stdout redirected to it."""
    try:
        same = os.path.samefile(src, dst)
    except OSError:  # dst does not exist (yet), or cannot be looked at: it is not src
        return
    if same:
        raise FileSafetyError(
            f"{dst}: this is the input file {src} (under another name, or a link to it); writing there "
            "would destroy the input: give another --output"
        )


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def _tag() -> str:
    return f"{_host()}-{os.getpid()}.{secrets.token_hex(4)}"


def umask() -> int:
    """The process umask, read without changing it for other threads for longer than two calls."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows, or a folder we may write but not open: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_os_error(path: os.PathLike | str | None, e: OSError, doing: str = "write") -> str:
    """One line that names the path (when known), what failed and what to do about it."""
    hint = {
        errno.ENOSPC: "the disk is full: free space or write elsewhere",
        errno.EDQUOT: "the disk quota is exceeded: free space or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.EACCES: "permission denied: write to a folder you own, or fix its permissions",
        errno.EPERM: "operation not permitted: write to a folder you own",
        errno.ENOENT: "a folder on the way does not exist",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder: give a file path",
        errno.ENAMETOOLONG: "the name is too long",
    }.get(e.errno, e.strerror or str(e))
    return f"cannot {doing} {path}: {hint}" if path else f"a file operation failed: {hint}"


def _target(path: Path) -> tuple[Path, os.stat_result | None]:
    """The path to replace (a symlink resolved to what it points at) and its stat, or None if absent."""
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        if path.is_symlink():  # a dangling link: write where it points, keeping the link
            return Path(os.path.realpath(path)), None
        return path, None
    except OSError as e:
        raise FileSafetyError(describe_os_error(path, e, "inspect")) from None
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    return real, st


_STD = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


_FD_DIR = re.compile(r"^/proc/[0-9]+(/task/[0-9]+)?/fd$")


def _own_fd(path: Path) -> int | None:
    """This process's descriptor when `path` is /dev/stdin, /dev/stdout or /dev/stderr (through any
    symlinks): written into the open stream, as the shell set it up."""
    p = os.path.abspath(path)
    for _ in range(16):
        if p in _STD:
            return _STD[p]
        if not os.path.islink(p):
            return None
        p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
    return None


def _fd_link(path: Path) -> bool:
    """Whether `path` is, or leads through symlinks to, an open-descriptor link (/dev/fd/N,
    /proc/<pid or self or thread-self>/fd/N, a folder linked to one): a file some process has open,
    which must be appended to, never truncated or replaced under it."""
    p = os.path.abspath(path)
    for _ in range(16):
        if _FD_DIR.match(os.path.realpath(os.path.dirname(p))):
            return True
        if not os.path.islink(p):
            return False
        p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
    return False


class _Writer:
    """A file whose write errors name the path being written (a full disk says which file)."""

    def __init__(self, f: IO, path: Path):
        self._f, self._path = f, path

    def write(self, data):
        """As the file's write; an OSError becomes a FileSafetyError naming the path."""
        try:
            return self._f.write(data)
        except OSError as e:
            raise FileSafetyError(describe_os_error(self._path, e)) from None

    def __getattr__(self, name):
        return getattr(self._f, name)


def _flush(f: IO, path: Path, sync: bool = False) -> None:
    try:
        f.flush()
        if sync:
            os.fsync(f.fileno())
    except OSError as e:
        raise FileSafetyError(describe_os_error(path, e)) from None


def _close_quietly(f: IO) -> None:
    """Close after a failed flush without a second error hiding the first (close flushes again)."""
    try:
        f.close()
    except OSError:
        pass


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path`, whole.

    On an exception the temporary file is removed and `path` is left as it was (the exception is not
    changed: only writing to the file, and replacing, raise FileSafetyError). This process's own streams
    (/dev/stdout, /dev/fd/N) and a FIFO or character device at `path` are written into directly (a
    stream has no "whole"); a directory, socket or block device is refused. See the module docstring
    for permissions and symlinks.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    kw = {"encoding": encoding} if mode == "w" else {}
    path = Path(path)
    fd = _own_fd(path)
    fd_link = fd is None and _fd_link(path)
    target, st = (path, None) if fd is not None or fd_link else _target(path)
    if fd is not None or fd_link or (st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode))):
        # a stream: written into, never truncated-and-replaced (stdout redirected to a file keeps what it held)
        try:
            if fd is not None:
                stream = os.fdopen(os.dup(fd), mode, **kw)
            else:
                stream = open(path, mode.replace("w", "a") if fd_link else mode, **kw)
        except OSError as e:
            raise FileSafetyError(describe_os_error(path, e)) from None
        try:
            yield _Writer(stream, path)
            _flush(stream, path)
        finally:
            _close_quietly(stream)
        return
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "a device or special file"
        )
        raise FileSafetyError(f"{path} is {kind}, not a regular file: refusing to replace it; give a file path")
    folder = target.parent
    perms = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~umask()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{target.name}.{_tag()}{PARTIAL}"
        f = os.fdopen(
            os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600), mode, **kw
        )
    except OSError as e:
        raise FileSafetyError(describe_os_error(path, e)) from None
    try:
        try:
            yield _Writer(f, path)
            _flush(f, path, sync=True)
        finally:
            _close_quietly(f)
        _install(tmp, target, perms, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _install(tmp: Path, target: Path, perms: int, path: Path) -> None:
    """Give a whole, fsynced temporary its final mode and rename it over target; fsync the folder."""
    try:
        os.chmod(tmp, perms)
        os.replace(tmp, target)
    except OSError as e:
        raise FileSafetyError(describe_os_error(path, e)) from None
    _fsync_dir(target.parent)


def partial_path(path: str | os.PathLike) -> Path:
    """A temporary name beside `path` for a writer that must write by name (then `commit_partial`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_tag()}{PARTIAL}")


def commit_partial(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync a file written by name at `partial_path(path)` and rename it over `path` (see atomic_write)."""
    tmp, path = Path(tmp), Path(path)
    target, st = _target(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise FileSafetyError(f"{path} is not a regular file: refusing to replace it; give a file path")
    try:
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise FileSafetyError(describe_os_error(path, e)) from None
        _install(tmp, target, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~umask(), path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`path` holds exactly `text` (UTF-8) afterwards, or is unchanged (see `atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj, *, indent: int | None = 1, allow_nan: bool = True) -> None:
    """`obj` as UTF-8 JSON (and a final newline), written atomically (allow_nan=False refuses NaN/Infinity)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=allow_nan, default=str)
    write_text_atomic(path, text + "\n")


def temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new empty folder beside `parent/name`, to fill and then `replace_dir` into place."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{name}.{_tag()}{PARTIAL}"
        os.mkdir(tmp, 0o777)  # the umask applies, as for any new folder
    except OSError as e:
        raise FileSafetyError(describe_os_error(parent, e, "create a folder in")) from None
    return tmp


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Put the folder `src` at `dst`; `dst` is always either the old folder, whole, or the new one.

    Every file of `src` is fsynced first. An old `dst` is renamed aside, then removed once `src` is in
    place. `dst` must be a folder or absent: anything else is refused.
    """
    src, dst = Path(src), Path(dst)
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise FileSafetyError(f"{dst} is not a folder: refusing to replace it; move it away and retry")
    old = None
    try:
        _fsync_tree(src)
        if dst.exists():
            old = dst.with_name(f".{dst.name}.{_tag()}.old{PARTIAL}")
            os.replace(dst, old)
        os.replace(src, dst)
        _fsync_dir(dst.parent)
    except OSError as e:
        if old is not None and not dst.exists():
            with contextlib.suppress(OSError):
                os.replace(old, dst)  # put the old one back
        raise FileSafetyError(describe_os_error(dst, e, "replace")) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_TAG = re.compile(r"\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)\.[0-9a-f]{8}(\.old)?" + re.escape(PARTIAL) + "$")


def _writer_gone(name: str) -> bool:
    """Whether the process named in a temporary's `<host>-<pid>` tag has certainly ended."""
    m = _TAG.search(name)
    if m is None or m["host"] != _host():
        return False  # not ours, or another machine's (a shared file system): not ours to judge
    pid = int(m["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def sweep_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (files and folders) a killed writer left in `folder`; return them."""
    folder = Path(folder)
    swept = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return swept
    for p in entries:
        if p.name.startswith(".") and p.name.endswith(PARTIAL) and _writer_gone(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            swept.append(p)
    return swept
