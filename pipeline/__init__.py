"""seqship's stages and the `pipeline` command: data -> train -> export -> verify -> package."""
from importlib import metadata

try:
    __version__ = metadata.version("seqship")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
