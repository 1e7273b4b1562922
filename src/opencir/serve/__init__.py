"""Serving: the FastAPI app (search API, gallery images, web page) and its runners."""

from opencir.serve.app import Engine, ServeConfig, create_app
from opencir.serve.runner import RunningServer, serve_forever, start_in_thread

__all__ = [
    "Engine",
    "RunningServer",
    "ServeConfig",
    "create_app",
    "serve_forever",
    "start_in_thread",
]
