"""`pipeline serve`: the Open Inference Protocol (KServe v2) over HTTP (extra `serve`).

Importing this package costs nothing: starlette, uvicorn and prometheus_client load when a server starts.
"""

from seqship.runtime.serve.app import Limits, load_models, serve

__all__ = ["Limits", "load_models", "serve"]
