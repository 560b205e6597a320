"""`pipeline serve`: the Open Inference Protocol (KServe v2) over HTTP (extra `serve`)."""
