"""The dashboard, the JSON API and ``/metrics``: a FastAPI app over a ``FactoryView``.

Read-only: every route is a GET (``/login`` only sets a cookie). Pages are rendered on the
server with Jinja2 (autoescaped: queue names and messages come from configs and remote systems)
and work without JavaScript; htmx re-fetches their live parts, uPlot draws the charts. Front-end
files are vendored (``static/vendor``), and a Content-Security-Policy keeps every request on this
server. Swagger UI is off (it loads from a CDN); ``/openapi.json`` documents ``/api/v1``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.routing import Route

from autopyfactory import __version__
from autopyfactory.web import pages
from autopyfactory.web.auth import Access
from autopyfactory.web.config import WebSettings
from autopyfactory.web.logserver import log_routes
from autopyfactory.web.models import (
    CascadeView,
    EventRecord,
    Explanation,
    Health,
    QueueDetail,
    QueuePage,
    ReportInfo,
    Series,
    StatusReport,
)
from autopyfactory.web.view import FactoryView, ViewError

HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# a stored simulation report is self-contained: inline script and style, no request at all
REPORT_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
CHART_HOURS = (0.25, 1, 6, 24, 72, 168)


def create_app(
    view: FactoryView,
    settings: WebSettings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    base_url: Callable[[], str | None] = lambda: None,
    logserver_url: Callable[[], str | None] = lambda: None,
) -> FastAPI:
    settings = settings or WebSettings()
    app = FastAPI(
        title="autopyfactory",
        version=__version__,
        description="Read-only JSON API of a running factory (the models `apf status --json` and "
        "`apf explain --json` print).",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: off; /openapi.json stays
        redoc_url=None,
    )
    access = Access(settings)
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.globals.update(
        sparkline=sparkline_svg,
        qurl=queue_url,
        refresh=settings.refresh,
        version=__version__,
        factory_id=view.factory_id,
        chart_hours=CHART_HOURS,
    )
    env.filters.update(ts=format_ts, ago=format_ago, num=format_num, dur=format_duration)

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    app.middleware("http")(access.middleware)  # added last: runs first
    app.router.routes.append(Route("/login", access.login, methods=["GET", "POST"]))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(ViewError)
    async def view_error(request: Request, exc: ViewError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status_code=503)
        return PlainTextResponse(f"503 service unavailable: {exc}\n", status_code=503)

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("now", view.now())
        return templates.TemplateResponse(request, name, context, status_code=status)

    def not_found(request: Request, what: str) -> HTMLResponse:
        return render(request, "error.html", 404, title="Not found", message=what)

    # -- pages ------------------------------------------------------------------------------------
    def overview_args(
        page: int, per: int, sort: str, order: str, q: str, state: str
    ) -> tuple[QueuePage, Callable[..., str]]:
        data = pages.overview(view, page=page, per_page=per, sort=sort, order=order, text=q, state=state)
        current = {"q": q, "state": state, "sort": data.sort, "order": data.order, "per": data.per_page}

        def link(path: str = "/", **changes: Any) -> str:
            params = {**current, "page": data.page, **changes}
            return path + "?" + urlencode({k: v for k, v in params.items() if v not in ("", None)})

        return data, link

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview_page(
        request: Request,
        page: int = Query(1, ge=1),
        per: int = Query(50, ge=1, le=pages.MAX_PER_PAGE),
        sort: str = "name",
        order: str = "asc",
        q: str = Query("", max_length=200),
        state: str = Query("", max_length=40),
    ) -> HTMLResponse:
        data, link = overview_args(page, per, sort, order, q, state)
        return render(request, "overview.html", data=data, link=link, states=pages.state_values())

    @app.get("/partials/queues", response_class=HTMLResponse, include_in_schema=False)
    def overview_partial(
        request: Request,
        page: int = Query(1, ge=1),
        per: int = Query(50, ge=1, le=pages.MAX_PER_PAGE),
        sort: str = "name",
        order: str = "asc",
        q: str = Query("", max_length=200),
        state: str = Query("", max_length=40),
    ) -> HTMLResponse:
        data, link = overview_args(page, per, sort, order, q, state)
        return render(request, "_queues.html", data=data, link=link)

    def queue_context(name: str) -> dict[str, Any] | None:
        detail = pages.queue_detail(view, name, decisions=5)
        if detail is None:
            return None
        return {"d": detail, "logs": settings.logs.serving}

    @app.get("/queues/{name:path}", response_class=HTMLResponse, include_in_schema=False)
    def queue_page(request: Request, name: str, hours: float = Query(6, gt=0, le=24 * 31)) -> HTMLResponse:
        context = queue_context(name)
        if context is None:
            return not_found(request, f"no queue {name!r}")
        return render(request, "queue.html", hours=hours, **context)

    @app.get("/partials/queue/{name:path}", response_class=HTMLResponse, include_in_schema=False)
    def queue_partial(request: Request, name: str) -> HTMLResponse:
        context = queue_context(name)
        if context is None:
            return not_found(request, f"no queue {name!r}")
        return render(request, "_queue.html", **context)

    @app.get("/cascades", response_class=HTMLResponse, include_in_schema=False)
    def cascades_page(request: Request) -> HTMLResponse:
        return render(request, "cascades.html", cascades=view.cascades())

    @app.get("/partials/cascades", response_class=HTMLResponse, include_in_schema=False)
    def cascades_partial(request: Request) -> HTMLResponse:
        return render(request, "_cascades.html", cascades=view.cascades())

    @app.get("/health", response_class=HTMLResponse, include_in_schema=False)
    def health_page(request: Request) -> HTMLResponse:
        return render(
            request, "health.html", h=view.health(), web=settings, base=base_url(), logserver=logserver_url()
        )

    @app.get("/partials/health", response_class=HTMLResponse, include_in_schema=False)
    def health_partial(request: Request) -> HTMLResponse:
        return render(
            request, "_health.html", h=view.health(), web=settings, base=base_url(), logserver=logserver_url()
        )

    @app.get("/reports", response_class=HTMLResponse, include_in_schema=False)
    def reports_page(request: Request) -> HTMLResponse:
        return render(
            request, "reports.html", reports=list_reports(settings.reports_dir), where=settings.reports_dir
        )

    @app.get("/reports/{name}", include_in_schema=False)
    def report_file(request: Request, name: str) -> Response:
        path = report_path(settings.reports_dir, name)
        if path is None:
            return not_found(request, f"no report {name!r}")
        return FileResponse(
            path, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": REPORT_CSP}
        )

    @app.get("/robots.txt", include_in_schema=False)
    def robots() -> PlainTextResponse:
        return PlainTextResponse("User-agent: *\nDisallow: /\n")

    # -- JSON API --------------------------------------------------------------------------------
    @app.get("/api/v1/status", response_model=StatusReport, tags=["factory"])
    def api_status() -> StatusReport:
        """Every queue with its last decision and state, pollers and targets (`apf status --json`)."""
        base = base_url()
        return pages.status_report(view, metrics=f"{base}/metrics" if base else None, web=base)

    @app.get("/api/v1/queues", response_model=QueuePage, tags=["queues"])
    def api_queues(
        page: int = Query(1, ge=1),
        per_page: int = Query(50, ge=1, le=pages.MAX_PER_PAGE),
        sort: str = Query("name", description=f"one of {', '.join(pages.SORTS)}"),
        order: str = Query("asc", pattern="^(asc|desc)$"),
        q: str = Query("", max_length=200, description="part of the queue name"),
        state: str = Query("", max_length=40, description="one queue state"),
        sparklines: bool = False,
    ) -> QueuePage:
        """One page of the overview (filter, sort, page), optionally with sparkline series."""
        if sort not in pages.SORTS:
            raise HTTPException(422, f"sort: one of {', '.join(pages.SORTS)}")
        return pages.overview(
            view,
            page=page,
            per_page=per_page,
            sort=sort,
            order=order,
            text=q,
            state=state,
            sparklines=sparklines,
        )

    @app.get("/api/v1/queues/{name:path}", response_model=QueueDetail, tags=["queues"])
    def api_queue(
        name: str,
        decisions: int = Query(10, ge=0, le=500),
        events: int = Query(30, ge=0, le=1000),
        pilots: int = Query(100, ge=0, le=5000),
    ) -> QueueDetail:
        """One queue: summary, plugins, last decisions with every step, events, pilots."""
        detail = pages.queue_detail(view, name, decisions=decisions, events=events, pilots=pilots)
        if detail is None:
            raise HTTPException(404, f"no queue {name!r}")
        return detail

    @app.get("/api/v1/decisions/{name:path}", response_model=Explanation, tags=["queues"])
    def api_decisions(name: str, last: int = Query(5, ge=1, le=500)) -> Explanation:
        """A queue's (or `cascade:NAME`'s) last decisions and events (`apf explain --json`)."""
        known = view.queue_info(name) is not None or any(f"cascade:{c.name}" == name for c in view.cascades())
        if not known:
            raise HTTPException(404, f"no queue or cascade {name!r}")
        return pages.explanation(view, name, last)

    @app.get("/api/v1/events", response_model=list[EventRecord], tags=["factory"])
    def api_events(queue: str | None = None, limit: int = Query(50, ge=1, le=1000)) -> list[EventRecord]:
        """Events, newest first: of one queue (or `cascade:NAME`), or of the whole factory."""
        return view.events(queue, limit)

    @app.get("/api/v1/series/{name:path}", response_model=Series, tags=["queues"])
    def api_series(
        name: str, hours: float = Query(6, gt=0, le=24 * 31), points: int = Query(300, ge=2, le=2000)
    ) -> Series:
        """A queue's demand, pending, running and decided n over time (chart data)."""
        if view.queue_info(name) is None and not name.startswith("cascade:"):
            raise HTTPException(404, f"no queue {name!r}")
        now = view.now()
        since = now - hours * 3600
        return view.history([name], since, points).get(name) or Series(start=since, end=now)

    @app.get("/api/v1/cascades", response_model=list[CascadeView], tags=["cascades"])
    def api_cascades() -> list[CascadeView]:
        """Every cascade: tiers in order with status, quota burn-down and forecast, cost per month."""
        return view.cascades()

    @app.get("/api/v1/cascades/{name}", response_model=CascadeView, tags=["cascades"])
    def api_cascade(name: str) -> CascadeView:
        for cascade in view.cascades():
            if cascade.name == name:
                return cascade
        raise HTTPException(404, f"no cascade {name!r}")

    @app.get("/api/v1/health", response_model=Health, tags=["factory"])
    def api_health() -> Health:
        """Pollers, targets, credentials (time left), store, monitors, the decision loop."""
        return view.health()

    @app.get("/api/v1/reports", response_model=list[ReportInfo], tags=["reports"])
    def api_reports() -> list[ReportInfo]:
        """Stored simulation reports (`apf simulate --html` pages in the reports directory)."""
        return list_reports(settings.reports_dir)

    if registry is not None:
        app.router.routes.append(metrics_route(registry))

    if settings.logs.serving:
        app.router.routes.extend(r for r in log_routes(settings.logs, "/logs") if r.path != "/robots.txt")

    return app


def metrics_route(registry: CollectorRegistry) -> Route:
    """``GET /metrics`` in Prometheus text format. A plain route: mounting prometheus_client's
    ASGI app would answer ``/metrics`` with a 307 to ``/metrics/``."""

    def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics, methods=["GET"])


# -- helpers for templates ----------------------------------------------------------------------------
def queue_url(name: str, prefix: str = "/queues/") -> str:
    return prefix + quote(name, safe="")


def format_ts(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = abs(seconds)
    if s < 90:
        text = f"{s:.0f}s"
    elif s < 5400:
        text = f"{s / 60:.0f}m"
    elif s < 172800:
        text = f"{s / 3600:.1f}h"
    else:
        text = f"{s / 86400:.1f}d"
    return text if seconds >= 0 else "-" + text


def format_ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    delta = now - t
    return f"{format_duration(delta)} ago" if delta >= 0 else f"in {format_duration(-delta)}"


def format_num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def sparkline_svg(series: Series | None, width: int = 120, height: int = 24) -> Markup:
    """Demand (blue) and running (green) over the asked window as an inline SVG: no JavaScript
    needed. Only numbers computed here go into the markup."""
    if series is None or not series.t:
        return Markup(
            f'<svg class="spark" width="{width}" height="{height}" role="img" aria-label="no history"></svg>'
        )
    t0 = series.start if series.start is not None else series.t[0]
    t1 = series.end if series.end is not None else series.t[-1]
    span_t = (t1 - t0) or 1.0
    values = [v for v in (*series.demand, *series.running) if v is not None]
    hi = max(values, default=0) or 1

    def points(values: Sequence[int | None]) -> str:
        out = []
        for t, v in zip(series.t, values, strict=False):
            if v is None:
                continue
            x = min(max((t - t0) / span_t, 0.0), 1.0) * (width - 4) + 3
            y = height - 2 - (v / hi) * (height - 4)
            out.append((x, y))
        if len(out) == 1:  # one point: a short tick, so it shows
            out.insert(0, (out[0][0] - 3, out[0][1]))
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in out)

    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="demand and running, last hours">'
        f'<polyline class="spark-demand" fill="none" stroke="#1f77b4" stroke-width="1.5" '
        f'points="{points(series.demand)}"/>'
        f'<polyline class="spark-running" fill="none" stroke="#2ca02c" stroke-width="1.5" '
        f'points="{points(series.running)}"/>'
        "</svg>"
    )


def list_reports(directory: Path | None) -> list[ReportInfo]:
    if directory is None or not directory.is_dir():
        return []
    out = []
    for path in directory.glob("*.html"):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append(ReportInfo(name=path.name, size=st.st_size, modified=st.st_mtime))
    return sorted(out, key=lambda r: r.modified, reverse=True)


def report_path(directory: Path | None, name: str) -> Path | None:
    """A report file by its bare name (no directories: ``name`` never leaves the reports dir)."""
    if directory is None or "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".html"):
        return None
    path = directory / name
    return path if path.is_file() else None
