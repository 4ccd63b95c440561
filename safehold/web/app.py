"""The dashboard as a WSGI application (Werkzeug routing, Jinja2 templates with autoescape).

Every route needs the token (security.py); every response carries the security headers;
the only state-changing routes are the two actions, POST only, with the CSRF token, and only
when the server was started with --allow-actions (403 otherwise). Pages: ``/`` overview,
``/platform/<name>``, ``/snapshots`` (filters), ``/r/<n>/snapshot/<id>`` (a snapshot and
its tree; ``?path=``), ``/r/<n>/snapshot/<id>/download?path=`` (a file, or a directory as
tar), ``/platform/<name>/action/<job>`` (confirm, then POST), ``/static/<file>``.
"""

from __future__ import annotations

import mimetypes
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from jinja2 import Environment, PackageLoader, select_autoescape
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from safehold.archive.entries import DIR, FILE, display_name
from safehold.cli.render import size
from safehold.errors import SafeholdError
from safehold.web import browser, views
from safehold.web.data import Sources, documents_or_error
from safehold.web.jobs import ACTIONS, JobQueue
from safehold.web.security import COOKIE, HEADERS, Guard

STATIC = {"style.css": "text/css", "favicon.svg": "image/svg+xml"}

RULES = Map(
    [
        Rule("/", endpoint="overview", methods=["GET"]),
        Rule("/platform/<name>", endpoint="platform", methods=["GET"]),
        Rule("/platform/<name>/action/<job>", endpoint="action", methods=["GET", "POST"]),
        Rule("/snapshots", endpoint="snapshots", methods=["GET"]),
        Rule("/r/<int:key>/snapshot/<snapshot_id>", endpoint="snapshot", methods=["GET"]),
        Rule("/r/<int:key>/snapshot/<snapshot_id>/download", endpoint="download", methods=["GET"]),
        Rule("/static/<file>", endpoint="static", methods=["GET"]),
    ],
    strict_slashes=False,
)


class Unauthorized(HTTPException):
    code = 401
    description = (
        "This dashboard needs its token: open the URL that `safehold serve` printed, or send "
        "Authorization: Bearer TOKEN."
    )

    def get_headers(self, environ=None, scope=None):  # type: ignore[no-untyped-def, override]
        return [("Content-Type", "text/html; charset=utf-8"), ("WWW-Authenticate", "Bearer")]


@dataclass
class Settings:
    """How this server was started."""

    allow_actions: bool = False
    tls: bool = False
    clock: Callable[[], float] = time.time


def _raw_query(request: Request) -> dict[bytes, bytes]:
    """The query string as raw bytes (file names need not be UTF-8)."""
    query = request.environ.get("QUERY_STRING", "").encode("latin-1")
    found: dict[bytes, bytes] = {}
    for pair in query.split(b"&"):  # parse_qsl decodes values as UTF-8: not byte-clean
        key, _, value = pair.replace(b"+", b" ").partition(b"=")
        found.setdefault(urllib.parse.unquote_to_bytes(key), urllib.parse.unquote_to_bytes(value))
    return found


def quote_path(raw: bytes) -> str:
    return urllib.parse.quote(raw, safe="/")


class Dashboard:
    """The WSGI callable."""

    def __init__(
        self, sources: Sources, guard: Guard, settings: Settings, jobs: JobQueue | None = None
    ) -> None:
        self.sources = sources
        self.guard = guard
        self.settings = settings
        self.jobs = jobs
        self.templates = Environment(
            loader=PackageLoader("safehold.web", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.templates.filters["size"] = size
        self.templates.filters["quote_path"] = quote_path
        self.templates.globals["ACTIONS"] = ACTIONS

    # ---------------------------------------------------------------- plumbing

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except HTTPException as error:
            response = self.error(error)
        except SafeholdError as error:  # a damaged or unreachable repository: named, no trace
            print(f"safehold: dashboard: {request.path}: {error}", file=sys.stderr)
            response = self.render(
                "error.html", status=500, code=500, title="cannot read", message=str(error)
            )
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = RULES.bind_to_environ(request.environ)
        endpoint, values = adapter.match()  # NotFound, MethodNotAllowed
        presented = request.args.get("token")
        if presented is not None and request.method == "GET":
            return self.login(request, presented)
        if not self.authorized(request):
            raise Unauthorized()
        return getattr(self, f"page_{endpoint}")(request, **values)

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return self.guard.token_ok(header[len("Bearer ") :].strip())
        return self.guard.session_ok(request.cookies.get(COOKIE))

    def login(self, request: Request, presented: str) -> Response:
        """``?token=`` once: a session cookie, and the same URL without the token."""
        if not self.guard.token_ok(presented):
            raise Unauthorized()
        query = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
        target = request.path + ("?" + urllib.parse.urlencode(query) if query else "")
        response = Response("", status=303, headers={"Location": target})
        response.set_cookie(
            COOKIE,
            self.guard.session,
            httponly=True,
            samesite="Strict",
            secure=self.settings.tls,
            path="/",
        )
        return response

    def render(self, template: str, status: int = 200, **context: object) -> Response:
        page = self.templates.get_template(template).render(
            csrf=self.guard.csrf,
            platforms=[p.platform.name for p in self.sources.platforms],
            allow_actions=self.settings.allow_actions,
            generated=views.when(self.settings.clock()),
            **context,
        )
        return Response(page, status=status, content_type="text/html; charset=utf-8")

    def error(self, error: HTTPException) -> Response:
        if isinstance(error, Unauthorized):
            return Response(
                self.templates.get_template("error.html").render(
                    code=401, title="token needed", message=error.description, platforms=[]
                ),
                status=401,
                headers=error.get_headers(),
            )
        return self.render(
            "error.html",
            status=error.code or 500,
            code=error.code,
            title=error.name,
            message=error.description,
        )

    # ---------------------------------------------------------------- pages

    def page_overview(self, request: Request) -> Response:
        now = self.settings.clock()
        return self.render("overview.html", cards=views.overview(self.sources, now))

    def page_platform(self, request: Request, name: str) -> Response:
        entry = self.sources.platform(name)
        if entry is None:
            raise NotFound(f"no platform {name} here")
        page = views.platform_page(entry, self.sources, self.settings.clock())
        queued = self.jobs.of(name) if self.jobs else []
        return self.render("platform.html", page=page, queued=queued)

    def page_snapshots(self, request: Request) -> Response:
        filters = browser.Filters(
            platform=request.args.get("platform", ""),
            host=request.args.get("host", ""),
            tag=request.args.get("tag", ""),
            component=request.args.get("component", ""),
            since=_date(request.args.get("since")),
            until=_date(request.args.get("until"), end=True),
        )
        try:
            page = max(int(request.args.get("page", "1")), 1)
        except ValueError:
            raise BadRequest("page: not a number") from None
        rows, errors, hosts, tags = [], [], set(), set()
        for key, view in enumerate(self.sources.views):
            snapshots, _drills, error = documents_or_error(view)
            if error:
                errors.append(error)
            for snapshot in snapshots:
                hosts.add(snapshot.get("hostname", ""))
                tags.update(t for t in snapshot.get("tags") or [] if not t.startswith("component:"))
                if filters.matches(snapshot):
                    rows.append((snapshot["time"], key, snapshot))
        rows.sort(key=lambda row: row[0], reverse=True)
        start = (page - 1) * browser.PAGE
        shown = [browser.snapshot_row(key, s) for _t, key, s in rows[start : start + browser.PAGE]]
        query = {k: v for k, v in request.args.items() if k != "page"}
        return self.render(
            "snapshots.html",
            rows=shown,
            total=len(rows),
            page=page,
            pages=max((len(rows) + browser.PAGE - 1) // browser.PAGE, 1),
            filters=request.args,
            query=urllib.parse.urlencode(query),
            hosts=sorted(hosts),
            tags=sorted(tags),
            components=sorted(
                {c.name for p in self.sources.platforms for c in p.platform.components}
            ),
            errors=errors,
        )

    def _snapshot_and_path(
        self, request: Request, key: int, snapshot_id: str
    ) -> tuple[browser.RepositoryView, dict, bytes, dict]:
        view = self.sources.view(key)
        if view is None:
            raise NotFound("no such repository")
        snapshot = browser.find_snapshot(view, snapshot_id)
        if snapshot is None:
            raise NotFound(f"no snapshot {snapshot_id[:64]} in this repository")
        raw = _raw_query(request).get(b"path", b"/")
        try:
            parts = browser.split_path(raw)
        except browser.BadPath as error:
            raise BadRequest(f"path: {error}") from None
        entry = browser.lookup(view, snapshot, parts)  # a damaged tree: 500, named
        if entry is None:
            raise NotFound("no such path in this snapshot")
        return view, snapshot, b"/" + b"/".join(parts), entry

    def page_snapshot(self, request: Request, key: int, snapshot_id: str) -> Response:
        view, snapshot, path, entry = self._snapshot_and_path(request, key, snapshot_id)
        listing = []
        if entry["type"] == DIR:
            for child in browser.children(view, entry):
                info = browser.describe(child)
                info["path"] = path.rstrip(b"/") + b"/" + child["name"]
                listing.append(info)
        crumbs, walked = [], b""
        for part in [p for p in path.split(b"/") if p]:
            walked += b"/" + part
            crumbs.append((display_name(part), walked))
        return self.render(
            "snapshot.html",
            key=key,
            snapshot=browser.snapshot_row(key, snapshot),
            document=snapshot,
            path=path,
            shown_path=display_name(path),
            crumbs=crumbs,
            entry=browser.describe(entry),
            is_dir=entry["type"] == DIR,
            is_file=entry["type"] == FILE,
            listing=listing,
        )

    def page_download(self, request: Request, key: int, snapshot_id: str) -> Response:
        view, _snapshot, path, entry = self._snapshot_and_path(request, key, snapshot_id)
        name = path.rsplit(b"/", 1)[-1] or b"snapshot-" + snapshot_id[:8].encode()
        if entry["type"] == DIR:
            stream = browser.tar_stream(view, entry, name)
            return _attachment(stream, display_name(name) + ".tar", "application/x-tar", None)
        if entry["type"] != FILE:
            raise BadRequest("only files and directories can be downloaded")
        stream = browser.file_chunks(view, entry)
        return _attachment(
            stream, display_name(name), "application/octet-stream", entry.get("size", 0)
        )

    def page_action(self, request: Request, name: str, job: str) -> Response:
        if not self.settings.allow_actions or self.jobs is None:
            raise Forbidden("actions are off: start safehold serve with --allow-actions")
        entry = self.sources.platform(name)
        if entry is None or job not in ACTIONS:
            raise NotFound("no such platform or action")
        if request.method == "GET":
            return self.render("confirm.html", name=name, job=job, label=ACTIONS[job])
        if not self.guard.csrf_ok(request.form.get("csrf")):
            raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
        if request.form.get("confirm") != "yes":
            raise BadRequest("not confirmed")
        self.jobs.submit(name, job, entry.config_path)
        return Response(
            "", status=303, headers={"Location": f"/platform/{quote_path(name.encode())}"}
        )

    def page_static(self, request: Request, file: str) -> Response:
        if file not in STATIC:
            raise NotFound()
        data = resources.files("safehold.web").joinpath("static", file).read_bytes()
        return Response(data, content_type=STATIC[file] or mimetypes.guess_type(file)[0])


def _date(text: str | None, end: bool = False) -> float | None:
    """'2026-12-01' (UTC) -> its start (or, with ``end``, the next day's start)."""
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise BadRequest(f"{text!r} is not a date (YYYY-MM-DD)") from None
    return day.timestamp() + (86400 if end else 0)


def _attachment(
    stream: Iterable[bytes], name: str, content_type: str, length: int | None
) -> Response:
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    disposition = (
        f'attachment; filename="{ascii_name}"; '
        f"filename*=UTF-8''{urllib.parse.quote(name.encode('utf-8', 'surrogateescape'))}"
    )
    headers = {"Content-Disposition": disposition}
    if length is not None:
        headers["Content-Length"] = str(length)
    return Response(stream, content_type=content_type, headers=headers, direct_passthrough=True)
