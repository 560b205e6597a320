"""The bundle format: constants, file hashing and the checks every loader runs before trusting a bundle."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runtime.errors import BundleError

FORMAT = "seqship.bundle"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST = "manifest.json"
MODEL_ONNX = "model.onnx"
MODEL_TORCHSCRIPT = "model.pt"
TOKENIZER = "tokenizer.json"
MODEL_CARD = "README.md"
# What the ONNX predictor cannot run without; every other listed file is still checked.
REQUIRED_FILES = (MODEL_ONNX, TOKENIZER)
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


@dataclass(frozen=True)
class Bundle:
    """A bundle folder whose manifest and files have been checked."""

    root: Path
    manifest: dict

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"])

    def path(self, name: str) -> Path:
        return safe_member(self.root, name)


def read_manifest(root: str | os.PathLike) -> dict:
    """Parse and structurally validate manifest.json, without touching the other files."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle folder not found; pass the folder that holds {MANIFEST}")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath}: missing; this folder is not a seqship bundle")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: not valid JSON ({e}); the bundle is damaged, re-run `pipeline run package`") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: missing keys {missing}")
    if manifest["format"] != FORMAT:
        raise BundleError(f"{mpath}: format is {manifest['format']!r}, expected {FORMAT!r}")
    if manifest["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{mpath}: format_version {manifest['format_version']!r} is not supported by this runtime "
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
    return manifest


def open_bundle(root: str | os.PathLike) -> Bundle:
    """Check a bundle completely (manifest, every file's path, size and sha256) and return it."""
    root = Path(root)
    manifest = read_manifest(root)
    for name, entry in manifest["files"].items():
        path = safe_member(root, name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"{root / MANIFEST}: entry for {name!r} lacks a sha256")
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing; copy the whole bundle folder")
        size = path.stat().st_size
        if isinstance(entry.get("bytes"), int) and size != entry["bytes"]:
            raise BundleError(
                f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced); "
                "copy the bundle again"
            )
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise BundleError(
                f"{path}: sha256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}…; "
                "the file was altered after packaging, copy the bundle again"
            )
    return Bundle(root=root, manifest=manifest)
