"""Runs the app with uvicorn on a thread of the scheduler actor (it lives as long as the
scheduler, on the same node). Access logs are off: request lines are not needed, and nothing
about a caller but its tenant is ever written."""

from __future__ import annotations

import threading
import time

from .app import Backend, create_app


class ApiServer:
    def __init__(self, backend: Backend, port: int, host: str = "0.0.0.0"):
        import uvicorn

        config = uvicorn.Config(create_app(backend), host=host, port=port, log_level="warning", access_log=False,
                                limit_concurrency=256, timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="lorafarm-rest-api", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; raise OSError when it could not listen (the port taken)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the REST API did not start listening")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
