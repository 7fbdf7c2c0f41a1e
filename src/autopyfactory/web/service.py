"""The daemon's web side: the dashboard (+ JSON API + ``/metrics``) on ``web.address`` and the
pilot log server on ``baseLogDirUrl``'s port, both in daemon threads of the factory process.

``WebService(factory, registry).start()`` never raises: a setting that cannot work or a port
that is taken is logged, and the factory goes on without that part (as it did without metrics).
The log server retries its port every 60 s, as AutoPyFactory's did.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from autopyfactory.web.config import LogSettings, WebConfigError, WebSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from autopyfactory.engine.factory import Factory
    from autopyfactory.web.engine_view import EngineView
    from autopyfactory.web.server import WebServer

log = logging.getLogger("autopyfactory.web")

LOGSERVER_RETRY = 60.0


class WebService:
    def __init__(self, factory: Factory, registry: CollectorRegistry | None = None) -> None:
        self.factory = factory
        self.registry = registry
        self.settings: WebSettings | None = None
        self.logs = LogSettings()
        self.view: EngineView | None = None
        self.server: WebServer | None = None
        self.logserver: WebServer | None = None
        self._stop = threading.Event()
        self._log_thread: threading.Thread | None = None

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    def start(self) -> WebService:
        factory_settings = self.factory.config.settings
        try:
            self.logs = LogSettings.from_factory(factory_settings)
        except WebConfigError as exc:
            log.error("logserver: %s (pilot logs are not served)", exc)
        try:
            self.settings = WebSettings.from_factory(factory_settings, self.logs)
        except WebConfigError as exc:
            log.error("web: %s (continuing without the dashboard)", exc)
        else:
            if self.settings is None:
                log.info("web: off (web.address = None)")
            else:
                self._start_dashboard(self.settings)
        if self.logs.serving:
            self._log_thread = threading.Thread(target=self._serve_logs, name="logserver start", daemon=True)
            self._log_thread.start()
        return self

    def _start_dashboard(self, settings: WebSettings) -> None:
        from autopyfactory.web.app import create_app
        from autopyfactory.web.engine_view import EngineView
        from autopyfactory.web.server import WebServer

        self.view = EngineView(
            self.factory,
            log_root=settings.logs.root if settings.logs.serving else None,
            cache_s=settings.refresh,  # pages refresh that often: summaries are rebuilt at most as often
        )
        app = create_app(
            self.view,
            settings,
            registry=self.registry,
            base_url=lambda: self.url,
            logserver_url=lambda: self.logserver.url if self.logserver is not None else None,
        )
        try:
            self.server = WebServer(
                app,
                settings.host,
                settings.port,
                name="web dashboard",
                certfile=settings.certfile,
                keyfile=settings.keyfile,
                cafile=settings.cafile,
            ).start()
        except OSError as exc:
            log.error(
                "web: cannot listen on %s:%d: %s (continuing without the dashboard)",
                settings.host,
                settings.port,
                exc,
            )
            return
        self.factory.metrics_url = f"{self.server.url}/metrics" if self.registry is not None else None
        log.info("web dashboard at %s (authentication: %s)", self.server.url, settings.auth_label)

    def _serve_logs(self) -> None:
        from autopyfactory.web.logserver import log_app
        from autopyfactory.web.server import WebServer

        logs = self.logs
        try:
            host, port, prefix = logs.listen()
        except WebConfigError as exc:
            log.error("logserver: %s (pilot logs are not served)", exc)
            return
        if self.server is not None and port == self.server.port:
            log.error(
                "logserver: baseLogDirUrl's port %d is web.address's port: give one of them another "
                "(pilot logs stay available at %s/logs/)",
                port,
                self.server.url,
            )
            return
        while not self._stop.is_set():
            try:
                self.logserver = WebServer(log_app(logs, prefix), host, port, name="logserver").start()
            except OSError as exc:
                log.error(
                    "logserver: cannot listen on %s:%d: %s (retrying in %.0fs)",
                    host,
                    port,
                    exc,
                    LOGSERVER_RETRY,
                )
                self._stop.wait(LOGSERVER_RETRY)
                continue
            log.info("pilot log server: %s on %s:%d%s/", logs.root, host, self.logserver.port, prefix)
            return

    def stop(self) -> None:
        self._stop.set()
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
        for server in (self.server, self.logserver):
            if server is not None and not server.stop():
                log.warning("web: a server thread did not stop in time")
        if self.view is not None:
            self.view.close()
