"""The one narrow interface to an HTCondor schedd and its collector.

Every HTCondor plugin talks to a pool only through ``ScheddApi``: submit n jobs in one
transaction, a constrained and projected job query, remove/edit jobs, a bounded history query, a
constrained collector query for startd and master ads, and a peaceful ``condor_off`` of a startd.
The real implementation (``HTCondorSchedd``) drives the official bindings (``htcondor2``),
imported only when a pool is first contacted. Tests install an in-process stand-in with
``set_connector`` (tests/condor_standin.py), which evaluates constraints with real ``classad2``.

Addresses come from AutoPyFactory's keys ``<kind>.condor.scheddhost/scheddport/collectorhost/
collectorport`` or the legacy ``queryargs = -name <schedd> -pool <collector[:port]>``.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import Field, field_validator

from autopyfactory.plugins.base import BackendError, PluginOptions

if TYPE_CHECKING:
    import classad2
    import htcondor2

DEFAULT_PORT = 9618
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}

AdType = Literal["startd", "master"]
Action = Literal["remove", "hold", "release"]


@dataclass(frozen=True, slots=True)
class Address:
    """Which schedd and collector. ``None`` means the local one (from the local HTCondor config)."""

    schedd: str | None = None  # the schedd's Name as the collector knows it
    collector: str | None = None  # "host:port"

    @property
    def local(self) -> bool:
        return self.schedd is None and self.collector is None

    def label(self) -> str:
        """Names the endpoint in errors and action targets."""
        schedd = f"schedd {self.schedd}" if self.schedd else "local schedd"
        return f"{schedd} via collector {self.collector}" if self.collector else schedd


def parse_queryargs(text: str) -> tuple[str | None, str | None]:
    """APF 2.4's ``queryargs``: ``-name <schedd>`` and ``-pool <collector[:port]>`` (nothing else)."""
    words = shlex.split(text)
    schedd = pool = None
    i = 0
    while i < len(words):
        flag = words[i]
        if flag in ("-name", "-pool") and i + 1 < len(words):
            if flag == "-name":
                schedd = words[i + 1]
            else:
                pool = words[i + 1]
            i += 2
            continue
        raise ValueError(
            f"cannot use {flag!r}: queryargs understands only '-name <schedd>' and "
            "'-pool <collector[:port]>' (use scheddhost/collectorhost instead)"
        )
    return schedd, pool


def make_address(
    scheddhost: str | None = None,
    scheddport: int | None = None,
    collectorhost: str | None = None,
    collectorport: int | None = None,
    queryargs: str | None = None,
) -> Address:
    """Explicit host keys win over the legacy ``queryargs``; localhost means the local daemons."""
    q_schedd, q_pool = parse_queryargs(queryargs) if queryargs else (None, None)
    schedd = scheddhost or q_schedd
    if schedd is not None and schedd.strip().lower() in _LOCAL_HOSTS:
        schedd = None
    collector: str | None
    if collectorhost and collectorhost.strip().lower() not in _LOCAL_HOSTS:
        collector = f"{collectorhost.strip()}:{collectorport or DEFAULT_PORT}"
    elif collectorhost and collectorport and collectorport != DEFAULT_PORT:
        collector = f"{collectorhost.strip()}:{collectorport}"
    elif q_pool:
        collector = q_pool if ":" in q_pool else f"{q_pool}:{DEFAULT_PORT}"
    else:
        collector = None
    # A remote schedd is located by name through the collector (the local pool's unless one is
    # named), as APF did; scheddport is accepted for compatibility only.
    return Address(schedd=schedd, collector=collector)


class ScheddKeys(PluginOptions):
    """The schedd/collector keys shared by the Condor batch status, WMS status and submit plugins."""

    scheddhost: str | None = Field(None, description="remote schedd name (default: the local schedd)")
    scheddport: int | None = Field(
        None, description="accepted for AutoPyFactory compatibility; the schedd is found by name"
    )
    collectorhost: str | None = Field(
        None, description="collector (pool) that locates the remote schedd, host[:port]"
    )
    collectorport: int | None = Field(None, description="the collector's port when not in collectorhost")
    # APF 2.4: "-name <schedd> -pool <collector>"
    queryargs: str | None = Field(None, description="AutoPyFactory 2.4: '-name <schedd> -pool <collector>'")

    @field_validator("queryargs")
    @classmethod
    def _check_queryargs(cls, value: str | None) -> str | None:
        if value:
            parse_queryargs(value)
        return value

    def address(self) -> Address:
        return make_address(
            self.scheddhost, self.scheddport, self.collectorhost, self.collectorport, self.queryargs
        )


def quote(text: str) -> str:
    """A ClassAd string literal (same escaping as ``classad2.quote``), for building constraints."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ids_constraint(ids: Iterable[str]) -> str:
    """A constraint selecting exactly the jobs ``cluster.proc`` in ``ids``."""
    by_cluster: dict[int, list[int]] = {}
    for job_id in ids:
        cluster, proc = split_id(job_id)
        by_cluster.setdefault(cluster, []).append(proc)
    terms = []
    for cluster, procs in sorted(by_cluster.items()):
        members = ", ".join(str(p) for p in sorted(set(procs)))
        terms.append(f"(ClusterId == {cluster} && member(ProcId, {{{members}}}))")
    return " || ".join(terms) if terms else "false"


def split_id(job_id: str) -> tuple[int, int]:
    cluster, sep, proc = job_id.partition(".")
    if not sep or not cluster.isdigit() or not proc.isdigit():
        raise ValueError(f"not an HTCondor job id (cluster.proc): {job_id!r}")
    return int(cluster), int(proc)


def json_objects(text: str) -> list[str]:
    """The top-level ``{...}`` objects of a JSON array, as their original text."""
    out: list[str] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                out.append(text[start : i + 1])
    return out


def parse_ads(text: str) -> list[classad2.ClassAd]:
    """ClassAds from ``condor_q -long`` (old form), ``-json`` or new-form (``[ a = 1; ]``) text."""
    import classad2

    body = text.lstrip()
    if body.startswith("{") or (body.startswith("[") and body[1:].lstrip().startswith("{")):
        # condor_q -json prints one array; classad2 reads a stream of objects, so hand it those
        # (each object's text unchanged, so "\/Expr(...)\/" expressions survive)
        return list(classad2.parseAds("\n".join(json_objects(body)), classad2.ParserType.JSON))
    if body.startswith("["):
        return list(classad2.parseAds(body, classad2.ParserType.New))
    return list(classad2.parseAds(body, classad2.ParserType.Old))


class ScheddApi(Protocol):
    """What the HTCondor plugins may ask of a pool. Failures raise ``BackendError``."""

    address: Address

    def submit(self, description: htcondor2.Submit, count: int) -> tuple[int, list[int]]:
        """Queue ``count`` jobs of ``description`` in one transaction: (cluster id, proc ids)."""
        ...

    def query(self, constraint: str, projection: Sequence[str]) -> list[classad2.ClassAd]: ...

    def act(self, action: Action, ids: Sequence[str], constraint: str | None = None) -> None:
        """Act on the jobs ``ids``; with ``constraint``, only on those of them matching it."""
        ...

    def edit(self, ids: Sequence[str], attr: str, value: str) -> None:
        """Set ``attr`` to the ClassAd expression ``value`` on the jobs ``ids``."""
        ...

    def history(
        self, constraint: str, projection: Sequence[str], since: str | None = None
    ) -> list[classad2.ClassAd]:
        """Finished jobs matching ``constraint``, newest first, stopping at the first job matching
        the expression ``since`` (so a scan is bounded)."""
        ...

    def collector_query(
        self, ad_type: AdType, constraint: str, projection: Sequence[str]
    ) -> list[classad2.ClassAd]: ...

    def startd_off_peaceful(self, master_name: str) -> None:
        """``condor_off -peaceful -startd -name <master_name>``: finish running jobs, accept no more."""
        ...


class HTCondorSchedd:
    """``ScheddApi`` over the official bindings. One instance (and one lock) per address."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.label = address.label()
        # every call runs under the lock inside ``with``: an exception can never leave it held
        self._lock = threading.Lock()
        self._schedd: Any = None

    def _fail(self, what: str, exc: Exception) -> BackendError:
        return BackendError(self.label, f"{what} failed: {exc}")

    def _collector(self) -> Any:
        import htcondor2

        return (
            htcondor2.Collector(self.address.collector) if self.address.collector else htcondor2.Collector()
        )

    def _get_schedd(self) -> Any:
        import htcondor2

        if self._schedd is None:
            if self.address.schedd is None:
                self._schedd = htcondor2.Schedd()
            else:
                ad = self._collector().locate(htcondor2.DaemonType.Schedd, self.address.schedd)
                self._schedd = htcondor2.Schedd(ad)
        return self._schedd

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        with self._lock:
            try:
                return fn(self._get_schedd())
            except BackendError:
                raise
            except Exception as exc:
                # locate again next time: the schedd may have moved or restarted
                self._schedd = None
                raise self._fail(what, exc) from exc

    def submit(self, description: htcondor2.Submit, count: int) -> tuple[int, list[int]]:
        def run(schedd: Any) -> tuple[int, list[int]]:
            # a remote schedd needs the input files spooled; the local one reads them in place
            remote = self.address.schedd is not None
            result = schedd.submit(description, count=count, spool=remote)
            if remote:
                schedd.spool(result)
            first = result.first_proc()
            return result.cluster(), list(range(first, first + result.num_procs()))

        return self._call("submit", run)

    def query(self, constraint: str, projection: Sequence[str]) -> list[classad2.ClassAd]:
        return self._call("query", lambda s: s.query(constraint=constraint, projection=list(projection)))

    def act(self, action: Action, ids: Sequence[str], constraint: str | None = None) -> None:
        import htcondor2

        if not ids:
            return
        job_action = {
            "remove": htcondor2.JobAction.Remove,
            "hold": htcondor2.JobAction.Hold,
            "release": htcondor2.JobAction.Release,
        }[action]
        spec = ids_constraint(ids)
        if constraint:
            spec = f"({spec}) && ({constraint})"
        self._call(action, lambda s: s.act(job_action, spec, reason="autopyfactory"))

    def edit(self, ids: Sequence[str], attr: str, value: str) -> None:
        if ids:
            self._call("edit", lambda s: s.edit(list(ids), attr, value))

    def history(
        self, constraint: str, projection: Sequence[str], since: str | None = None
    ) -> list[classad2.ClassAd]:
        return self._call(
            "history",
            lambda s: s.history(constraint=constraint, projection=list(projection), since=since),
        )

    def collector_query(
        self, ad_type: AdType, constraint: str, projection: Sequence[str]
    ) -> list[classad2.ClassAd]:
        import htcondor2

        kind = {"startd": htcondor2.AdType.Startd, "master": htcondor2.AdType.Master}[ad_type]
        with self._lock:
            try:
                return self._collector().query(kind, constraint=constraint, projection=list(projection))
            except Exception as exc:
                raise self._fail(f"collector query ({ad_type})", exc) from exc

    def startd_off_peaceful(self, master_name: str) -> None:
        import htcondor2

        with self._lock:
            try:
                master = self._collector().locate(htcondor2.DaemonType.Master, master_name)
                htcondor2.send_command(master, htcondor2.DaemonCommand.DaemonOffPeaceful, "STARTD")
            except Exception as exc:
                raise self._fail(f"condor_off -peaceful -startd -name {master_name}", exc) from exc


# ---------------------------------------------------------------------------------------------
# Connections: one per address, shared by every plugin that names it.

Connector = Callable[[Address], ScheddApi]

_conn_lock = threading.Lock()
_connections: dict[Address, ScheddApi] = {}
_connector: Connector | None = None


def connect(address: Address) -> ScheddApi:
    """The shared ``ScheddApi`` for ``address`` (the bindings are imported on first contact)."""
    with _conn_lock:
        conn = _connections.get(address)
        if conn is None:
            conn = _connector(address) if _connector is not None else HTCondorSchedd(address)
            _connections[address] = conn
        return conn


def set_connector(connector: Connector | None) -> Connector | None:
    """Route every new connection through ``connector`` (tests, embedding); returns the old one."""
    global _connector
    with _conn_lock:
        previous, _connector = _connector, connector
        _connections.clear()
    return previous


def attr_value(ad: Mapping[str, Any], name: str) -> Any:
    """An attribute's evaluated value, or None when absent/undefined (ClassAd names ignore case)."""
    if hasattr(ad, "eval"):
        try:
            value = ad.eval(name)  # type: ignore[attr-defined]
        except Exception:
            return None
    else:
        lowered = {k.lower(): v for k, v in ad.items()}
        value = lowered.get(name.lower())
    # classad2 returns Value.Undefined / Value.Error for attributes it cannot produce
    if value is None or type(value).__name__ == "Value":
        return None
    return value
