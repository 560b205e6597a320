"""The bundle format: constants, file hashing and the checks every loader runs before trusting a bundle."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from seqship.runtime.errors import BundleError
from seqship.runtime.jsonio import strict_json

FORMAT = "seqship.bundle"
# 2: labels and tokenizer hash required in model.onnx's metadata, no external data, tokenizer spec v2
# (records its Unicode version). A version 1 bundle is refused: re-package it.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (2,)
MANIFEST = "manifest.json"
MODEL_ONNX = "model.onnx"
MODEL_TORCHSCRIPT = "model.pt"
TOKENIZER = "tokenizer.json"
MODEL_CARD = "README.md"
# What the ONNX predictor cannot run without; every other listed file is still checked. Their bytes are
# kept from the read that was hashed, so what runs is exactly what was verified.
REQUIRED_FILES = (MODEL_ONNX, TOKENIZER)
_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_MANIFEST = 16 << 20
REBUILD = "rebuild it with this seqship: `pipeline run export --force`, then `pipeline run all`"
REQUIRED_KEYS = ("format", "format_version", "labels", "files", "signature")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | os.PathLike) -> dict:
    """The manifest's record of one file: its sha256 and size in bytes."""
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def safe_member(root: Path, name: object) -> Path:
    """Resolve a manifest file name inside the bundle folder, refusing any path that leaves it."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise BundleError(f"{root}: manifest lists an invalid file name {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or os.path.isabs(name):
        raise BundleError(f"{root}: manifest file {name!r} points outside the bundle folder; refusing to load it")
    path = root / pure
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise BundleError(
            f"{root}: {name!r} resolves to {real}, outside the bundle folder (a symlink?); refusing to load it"
        )
    return path


def bundle_digest(root: str | os.PathLike) -> str:
    """The bundle's digest: sha256 of manifest.json's bytes (which lists every file's sha256)."""
    return sha256_file(Path(root) / MANIFEST)


def check_pin(expected: object) -> str:
    """A trusted digest as given by a user: 64 hex characters (any case) -> lower case, else BundleError."""
    if not isinstance(expected, str) or not _HEX64.fullmatch(expected.lower()):
        raise BundleError(
            f"expected_sha256 {expected!r} is not a sha256 (64 hex characters); pass the digest that "
            "`pipeline inspect DIR` prints for the bundle you trust"
        )
    return expected.lower()


@dataclass(frozen=True)
class Bundle:
    """A bundle folder whose manifest and files have been checked."""

    root: Path
    manifest: dict
    digest: str = ""  # sha256 of manifest.json's bytes: pins the whole bundle
    data: dict = None  # file name -> the verified bytes of the required files

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels, index = class id."""
        return tuple(self.manifest["labels"])

    def path(self, name: str) -> Path:
        """The path of a file listed in the manifest."""
        return safe_member(self.root, name)


def read_manifest(root: str | os.PathLike) -> dict:
    """Parse and structurally validate manifest.json, without touching the other files."""
    return _read_manifest(Path(root))[0]


def read_pinned_manifest(root: str | os.PathLike, expected_sha256: str | None = None) -> tuple[dict, str]:
    """manifest.json, read once: its digest is compared with expected_sha256 (when given) before it is
    parsed, then it is validated. Returns (manifest, digest)."""
    pin = check_pin(expected_sha256) if expected_sha256 is not None else None
    manifest, raw = _read_manifest(Path(root), pin)
    return manifest, hashlib.sha256(raw).hexdigest()


def _read_manifest(root: Path, pin: str | None = None) -> tuple[dict, bytes]:
    if not root.is_dir():
        if root.exists():  # a file given where the folder is wanted: name the folder it sits in
            raise BundleError(
                f"{root}: a file, not a bundle folder; pass the folder that holds {MANIFEST} (perhaps {root.parent})"
            )
        raise BundleError(f"{root}: bundle folder not found; pass the folder that holds {MANIFEST}")
    mpath = safe_member(root, MANIFEST)  # a link out of the folder is refused, as for every listed file
    if not mpath.is_file():  # follows a symlink: a FIFO or a device is not a file
        what = "not a regular file" if mpath.exists() else "missing"
        raise BundleError(f"{mpath}: {what}; this folder is not a seqship bundle")
    with open(mpath, "rb") as f:
        raw = f.read(MAX_MANIFEST + 1)
    if len(raw) > MAX_MANIFEST:
        raise BundleError(f"{mpath}: manifest.json is larger than 16 MiB; not a seqship manifest")
    digest = hashlib.sha256(raw).hexdigest()
    if pin is not None and digest != pin:
        raise BundleError(
            f"{mpath}: bundle digest {digest} is not the trusted {pin}; this is not the bundle you pinned "
            "(or it was re-packaged): get the bundle again from its source, or pin the new digest knowingly"
        )
    try:
        manifest = strict_json(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(
            f"{mpath}: not valid JSON ({str(e)[:200]}); the bundle is damaged, re-run `pipeline run package`"
        ) from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: missing keys {missing}")
    if manifest["format"] != FORMAT:
        raise BundleError(f"{mpath}: format is {manifest['format']!r}, expected {FORMAT!r}")
    version = manifest["format_version"]
    if type(version) is int and version == 1:
        raise BundleError(
            f"{mpath}: format_version 1: this bundle was made by an older seqship (this runtime reads version "
            f"{FORMAT_VERSION}); {REBUILD}"
        )
    if type(version) is not int or version not in SUPPORTED_FORMAT_VERSIONS:  # 2.0 and True are not versions
        raise BundleError(
            f"{mpath}: format_version {version!r} is not supported by this runtime "
            f"(supports {list(SUPPORTED_FORMAT_VERSIONS)}); upgrade seqship to load it"
        )
    labels = manifest["labels"]
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(x, str) for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise BundleError(f"{mpath}: 'labels' must be a non-empty list of distinct strings")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{mpath}: 'files' must map file names to {{sha256, bytes}}")
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{mpath}: 'files' does not list the required file {name!r}")
    for name, entry in files.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not _HEX64.fullmatch(entry["sha256"])
            or not isinstance(entry.get("bytes"), int)
            or isinstance(entry.get("bytes"), bool)
            or entry["bytes"] < 0
        ):
            raise BundleError(f"{mpath}: entry for {name!r} must be {{sha256: 64 lower-case hex, bytes: integer >= 0}}")
    return manifest, raw


def open_bundle(root: str | os.PathLike, expected_sha256: str | None = None, keep: tuple[str, ...] = ()) -> Bundle:
    """Check a bundle completely (manifest, every file's path, size and sha256) and return it.

    expected_sha256: the bundle digest you trust (sha256 of manifest.json); anything else is refused.
    The bytes of the required files and of the listed files named in `keep` are read once, hashed, and
    kept in Bundle.data: callers run (or unpickle) those very bytes, never the file opened again.
    """
    root = Path(root)
    manifest, digest = read_pinned_manifest(root, expected_sha256)
    data = {}
    for name, entry in manifest["files"].items():
        path = safe_member(root, name)
        if not path.is_file():
            what = "not a regular file" if path.exists() else "listed in the manifest but missing"
            raise BundleError(f"{path}: {what}; copy the whole bundle folder")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(
                f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced); "
                "copy the bundle again"
            )
        if name in REQUIRED_FILES or name in keep:
            with open(path, "rb") as f:
                content = f.read(entry["bytes"] + 1)
            file_digest = hashlib.sha256(content).hexdigest()
            data[name] = content
        else:
            file_digest = sha256_file(path)
        if file_digest != entry["sha256"]:
            raise BundleError(
                f"{path}: sha256 {file_digest[:12]}… does not match the manifest's {entry['sha256'][:12]}…; "
                "the file was altered after packaging, copy the bundle again"
            )
    return Bundle(root=root, manifest=manifest, digest=digest, data=data)
