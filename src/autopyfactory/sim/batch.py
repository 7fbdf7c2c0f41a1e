"""A simulated batch system (``batchsubmitplugin = Sim``, ``batchstatusplugin = Sim``).

Each queue submits to a simulated *site* (its queue name, or ``batchsubmit.sim.site`` so several
queues share one): ``capacity`` slots, pilots beyond them stay pending; a pilot may start
``start_delay`` seconds after submission, when a slot is free (first come, first served), and
ends ``runtime`` seconds after it started. ``fail_when_over`` makes the site refuse a submission
that would take its pilots (pending + running) above that number, with a capacity error, as a
full cloud or an exhausted allocation does; ``refuse`` gives time windows (seconds from the site's
creation, i.e. the factory's start) in which it refuses every submission with a capacity error, as
a cloud answering InsufficientInstanceCapacity for a while does.

Sites live in a process-wide ``SimWorld`` (``world()``), so the status plugin, one per site,
sees what the submit plugin created. Time is whatever the caller passes (``submit``/``poll``
get ``now``) or the world's clock (``cancel``/``retire``): a simulation installs a world with a
``VirtualClock`` (``reset_world(clock)``), and ``SimWorld.dump``/``SimWorld.load`` let it stop
and continue later. The simulation is event driven: advancing a site costs O(pilots that start
or end) and a poll returns its live pilots without rebuilding them, so thousands of pilots over
thousands of cycles stay cheap.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from autopyfactory.config.policy import Duration
from autopyfactory.decide.periods import parse_duration
from autopyfactory.model import BatchSnapshot, Pilot, PilotState, PilotTags
from autopyfactory.plugins.base import (
    BackendError,
    BatchStatusPlugin,
    BatchSubmitPlugin,
    FactoryContext,
    PluginOptions,
    SubmitOptions,
)
from autopyfactory.sim.clock import Clock, SystemClock

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

# Finished pilots stay visible to polls this long (like a batch system's recent history), so a
# poller that runs less often than pilots end still sees every pilot end.
KEEP_FINISHED = 3600.0


@dataclass(slots=True)
class _SimPilot:
    backend_id: str
    seq: int
    tags: PilotTags
    submitted_at: float
    ready_at: float  # earliest start (submit + start_delay)
    runtime: float
    started_at: float | None = None
    end_at: float | None = None  # scheduled end while running or retiring
    ended_at: float | None = None
    state: PilotState = PilotState.PENDING

    def view(self) -> Pilot:
        return Pilot(
            backend_id=self.backend_id,
            queue=self.tags.queue,
            state=self.state,
            intent_id=self.tags.intent_id,
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            ended_at=self.ended_at,
            instance_id=self.backend_id,
        )


@dataclass(frozen=True, slots=True)
class SiteParams:
    capacity: int = 100
    start_delay: float = 0.0
    runtime: float = 3600.0
    fail_when_over: int | None = None
    drain_time: float = 0.0
    refuse: tuple[tuple[float, float], ...] = ()  # [from, to) seconds from the site's origin


def parse_windows(text: str) -> tuple[tuple[float, float], ...]:
    """'20m-25m, 3600-4000' -> ((1200, 1500), (3600, 4000)): half-open windows, sorted."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        start, sep, end = item.partition("-")
        if not sep:
            raise ValueError(f"window {item!r} is not 'from-to' (seconds or durations from the start)")
        a, b = parse_duration(start.strip()), parse_duration(end.strip())
        if b <= a:
            raise ValueError(f"window {item!r} ends before it starts")
        out.append((a, b))
    return tuple(sorted(out))


Listener = Callable[[str, str, Pilot], None]  # (site, "submit" | "start" | "end", pilot)


class SimSite:
    """One simulated batch system. Not thread-safe on its own: the world's lock guards it."""

    def __init__(self, name: str, params: SiteParams, world: SimWorld, origin: float = 0.0) -> None:
        self.name = name
        self.params = params
        self.world = world
        self.origin = origin  # when the site came up: ``refuse`` windows count from here
        self.t = float("-inf")  # time the site has been advanced to
        self.seq = 0
        self.pilots: dict[str, _SimPilot] = {}  # pending, running, retiring
        self.running = 0  # running + retiring: they hold slots
        self._queue: deque[_SimPilot] = deque()  # pending, first come first served (lazy deletion)
        self._ends: list[tuple[float, int, str]] = []  # (end_at, seq, id) heap (lazy deletion)
        # what polls return, kept up to date on every change: factory -> id -> Pilot
        self._live: dict[str, dict[str, Pilot]] = {}
        self._recent: dict[str, dict[str, Pilot]] = {}
        self._recent_order: deque[tuple[float, str, str]] = deque()  # (ended_at, factory, id)
        # totals since the site was created
        self.started = 0
        self.ended = 0
        self.cancelled = 0
        self.pilot_seconds = 0.0

    # -- time ------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Run every start and end up to ``now``, in time order."""
        if now < self.t:
            return  # a late caller: the site already ran past this time
        capacity = self.params.capacity
        while True:
            head = self._head()
            t_start = max(head.ready_at, self.t) if head is not None and self.running < capacity else None
            t_end = self._next_end()
            if t_end is not None and t_end <= now and (t_start is None or t_end <= t_start):
                _, _, backend_id = heapq.heappop(self._ends)
                pilot = self.pilots[backend_id]
                self.t = max(self.t, t_end)
                self._finish(pilot, t_end, PilotState.DONE)
            elif t_start is not None and t_start <= now and head is not None:
                self._queue.popleft()
                self.t = t_start
                self._start(head, t_start)
            else:
                break
        self.t = now
        self._trim(now)

    def _head(self) -> _SimPilot | None:
        while self._queue and self._queue[0].state is not PilotState.PENDING:
            self._queue.popleft()
        return self._queue[0] if self._queue else None

    def _next_end(self) -> float | None:
        while self._ends:
            end_at, _, backend_id = self._ends[0]
            pilot = self.pilots.get(backend_id)
            if pilot is not None and pilot.end_at == end_at and pilot.ended_at is None:
                return end_at
            heapq.heappop(self._ends)  # stale: retired earlier, cancelled or already ended
        return None

    def _start(self, pilot: _SimPilot, t: float) -> None:
        pilot.state = PilotState.RUNNING
        pilot.started_at = t
        pilot.end_at = t + pilot.runtime
        heapq.heappush(self._ends, (pilot.end_at, pilot.seq, pilot.backend_id))
        self.running += 1
        self.started += 1
        self._publish(pilot, "start")

    def _finish(self, pilot: _SimPilot, t: float, state: PilotState) -> None:
        if pilot.state in (PilotState.RUNNING, PilotState.RETIRING):
            self.running -= 1
            self.pilot_seconds += t - (pilot.started_at or t)
        if state is PilotState.CANCELLED:
            self.cancelled += 1
        else:
            self.ended += 1
        pilot.state = state
        pilot.ended_at = t
        pilot.end_at = None
        del self.pilots[pilot.backend_id]
        factory = pilot.tags.factory_id
        view = pilot.view()
        self._live.get(factory, {}).pop(pilot.backend_id, None)
        self._recent.setdefault(factory, {})[pilot.backend_id] = view
        self._recent_order.append((t, factory, pilot.backend_id))
        self.world.notify(self.name, "end", view)

    def _publish(self, pilot: _SimPilot, what: str | None = None) -> Pilot:
        view = pilot.view()
        self._live.setdefault(pilot.tags.factory_id, {})[pilot.backend_id] = view
        if what is not None:
            self.world.notify(self.name, what, view)
        return view

    def _trim(self, now: float) -> None:
        horizon = now - self.world.keep_finished
        order = self._recent_order
        while order and order[0][0] < horizon:
            _, factory, backend_id = order.popleft()
            self._recent.get(factory, {}).pop(backend_id, None)

    # -- actions ---------------------------------------------------------------------------

    def submit(self, n: int, tags: PilotTags, now: float) -> list[Pilot]:
        self.advance(now)
        elapsed = now - self.origin
        for start, end in self.params.refuse:
            if start <= elapsed < end:
                raise BackendError(
                    f"sim:{self.name}",
                    f"refused {n} pilot(s): no capacity ({elapsed:.0f}s from the start, in the "
                    f"refusal window {start:.0f}-{end:.0f}s)",
                    capacity=True,
                )
        limit = self.params.fail_when_over
        if limit is not None and len(self.pilots) + n > limit:
            raise BackendError(
                f"sim:{self.name}",
                f"refused {n} pilot(s): {len(self.pilots)} pending or running, the site takes at most {limit}",
                capacity=True,
            )
        now = max(now, self.t)
        created = []
        views = []
        for _ in range(n):
            self.seq += 1
            pilot = _SimPilot(
                backend_id=f"{self.name}.{self.seq}",
                seq=self.seq,
                tags=tags,
                submitted_at=now,
                ready_at=now + self.params.start_delay,
                runtime=self.params.runtime,
            )
            self.pilots[pilot.backend_id] = pilot
            self._queue.append(pilot)
            views.append(self._publish(pilot, "submit"))
            created.append(pilot)
        self.advance(now)  # a pilot with no start delay and a free slot starts at once
        # as submitted (a pilot that started at once shows as running in the next poll)
        return [v if p.state is PilotState.PENDING else p.view() for p, v in zip(created, views, strict=True)]

    def cancel(self, backend_ids: Sequence[str], now: float) -> int:
        """Remove pilots (running ones too: a cancel is a removal). Unknown ids are gone already."""
        self.advance(now)
        done = 0
        for backend_id in backend_ids:
            pilot = self.pilots.get(backend_id)
            if pilot is not None:
                self._finish(pilot, max(now, self.t), PilotState.CANCELLED)
                done += 1
        return done

    def retire(self, backend_ids: Sequence[str], kill: bool, now: float) -> int:
        """Drain running pilots (they end after ``drain_time``); kill removes them at once.
        Pending pilots are simply cancelled."""
        self.advance(now)
        now = max(now, self.t)
        done = 0
        for backend_id in backend_ids:
            pilot = self.pilots.get(backend_id)
            if pilot is None:
                continue
            done += 1
            if pilot.state is PilotState.PENDING or kill:
                self._finish(pilot, now, PilotState.CANCELLED)
                continue
            end = now + self.params.drain_time
            if pilot.state is PilotState.RUNNING:
                pilot.state = PilotState.RETIRING
            if pilot.end_at is not None and end < pilot.end_at:
                if end <= now:
                    self._finish(pilot, now, PilotState.DONE)
                    continue
                pilot.end_at = end
                heapq.heappush(self._ends, (end, pilot.seq, pilot.backend_id))
            self._publish(pilot)
        return done

    # -- views -----------------------------------------------------------------------------

    def snapshot(self, factory_id: str, now: float) -> tuple[Pilot, ...]:
        self.advance(now)
        live = tuple(self._live.get(factory_id, {}).values())
        recent = self._recent.get(factory_id)
        return live + tuple(recent.values()) if recent else live

    def counts(self) -> dict[str, int]:
        pending = len(self.pilots) - self.running
        return {"pending": pending, "running": self.running, "started": self.started, "ended": self.ended}

    # -- persistence -----------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        def rec(p: _SimPilot) -> dict[str, Any]:
            return {
                "id": p.backend_id,
                "seq": p.seq,
                "tags": [p.tags.factory_id, p.tags.queue, p.tags.intent_id],
                "submitted_at": p.submitted_at,
                "ready_at": p.ready_at,
                "runtime": p.runtime,
                "started_at": p.started_at,
                "end_at": p.end_at,
                "state": str(p.state),
            }

        return {
            "params": {
                "capacity": self.params.capacity,
                "start_delay": self.params.start_delay,
                "runtime": self.params.runtime,
                "fail_when_over": self.params.fail_when_over,
                "drain_time": self.params.drain_time,
                "refuse": [list(w) for w in self.params.refuse],
            },
            "origin": self.origin,
            "t": self.t if self.t != float("-inf") else None,
            "seq": self.seq,
            "totals": [self.started, self.ended, self.cancelled, self.pilot_seconds],
            "pilots": [rec(p) for p in sorted(self.pilots.values(), key=lambda p: p.seq)],
        }

    def _restore(self, data: dict[str, Any]) -> None:
        self.t = data["t"] if data.get("t") is not None else float("-inf")
        self.origin = float(data.get("origin", 0.0))
        self.seq = int(data["seq"])
        self.started, self.ended, self.cancelled, self.pilot_seconds = data["totals"]
        for item in data["pilots"]:
            pilot = _SimPilot(
                backend_id=item["id"],
                seq=item["seq"],
                tags=PilotTags(*item["tags"]),
                submitted_at=item["submitted_at"],
                ready_at=item["ready_at"],
                runtime=item["runtime"],
                started_at=item["started_at"],
                end_at=item["end_at"],
                state=PilotState(item["state"]),
            )
            self.pilots[pilot.backend_id] = pilot
            if pilot.state is PilotState.PENDING:
                self._queue.append(pilot)
            else:
                self.running += 1
                if pilot.end_at is not None:
                    heapq.heappush(self._ends, (pilot.end_at, pilot.seq, pilot.backend_id))
            self._publish(pilot)


class SimWorld:
    """Every simulated site of the process, on one clock."""

    def __init__(self, clock: Clock | None = None, keep_finished: float = KEEP_FINISHED) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.keep_finished = keep_finished
        self.lock = threading.RLock()
        self.sites: dict[str, SimSite] = {}
        self.listeners: list[Listener] = []

    def site(self, name: str, params: SiteParams | None = None) -> SimSite:
        """The site called ``name``, created on first use; ``params`` replace its settings (a
        reload), pilots already submitted keep their schedule."""
        with self.lock:
            site = self.sites.get(name)
            if site is None:
                site = self.sites[name] = SimSite(name, params or SiteParams(), self, self.clock.now())
            elif params is not None and params != site.params:
                site.params = params
            return site

    def get(self, name: str) -> SimSite | None:
        return self.sites.get(name)

    def notify(self, site: str, what: str, pilot: Pilot) -> None:
        for listener in self.listeners:
            listener(site, what, pilot)

    def advance(self, now: float) -> None:
        with self.lock:
            for site in self.sites.values():
                site.advance(now)

    def dump(self) -> dict[str, Any]:
        """JSON-able state of every site (stop a simulation, store this, ``load`` it later)."""
        with self.lock:
            return {"version": 1, "sites": {name: site.dump() for name, site in self.sites.items()}}

    @classmethod
    def load(cls, data: dict[str, Any], clock: Clock | None = None) -> SimWorld:
        world = cls(clock)
        for name, item in data.get("sites", {}).items():
            params = dict(item["params"])
            params["refuse"] = tuple((float(a), float(b)) for a, b in params.get("refuse", ()))
            site = world.site(name, SiteParams(**params))
            site._restore(item)
        return world


_world_lock = threading.Lock()
_world = SimWorld()


def world() -> SimWorld:
    """The process-wide world the Sim plugins use."""
    return _world


def set_world(new: SimWorld) -> SimWorld:
    global _world
    with _world_lock:
        _world = new
    return new


def reset_world(clock: Clock | None = None) -> SimWorld:
    """Start over with no sites (tests, a new simulation) on ``clock``."""
    return set_world(SimWorld(clock))


# ---------------------------------------------------------------------------------------------
# Plugins


class SimSubmitOptions(SubmitOptions):
    capacity: int = Field(100, ge=0, description="slots; pilots beyond them stay pending")
    start_delay: Duration = Field(0.0, description="earliest start after submission (seconds or '5m')")
    runtime: Duration = Field(3600.0, description="how long a pilot runs once started")
    fail_when_over: int | None = Field(
        None, ge=0, description="refuse (capacity error) a submission that takes the site above this"
    )
    drain_time: Duration = Field(0.0, description="a retired (drained) pilot ends this long after retire")
    refuse: str | None = Field(
        None,
        description="refuse every submission (capacity error) in these windows from the start, "
        "'20m-25m, 2h-2h30m'",
    )
    site: str | None = Field(None, description="site name (default: the queue name); queues may share one")
    cost_per_hour: float | None = Field(
        None,
        ge=0,
        description="price of a pilot-hour here, for simulation reports (a policy tier's own wins)",
    )

    @field_validator("refuse")
    @classmethod
    def _refuse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_windows(value)
        return value


def _site_name(queue: QueueConfig) -> str:
    options = queue.plugin_options("batchsubmit")
    site = getattr(options, "site", None) if isinstance(options, SimSubmitOptions) else None
    return site or queue.name


class SimSubmit(BatchSubmitPlugin):
    name = "Sim"
    Options = SimSubmitOptions

    def __init__(self, queue: QueueConfig, options: PluginOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        if not isinstance(options, SimSubmitOptions):
            raise TypeError(f"Sim submit plugin needs SimSubmitOptions, got {type(options).__name__}")
        self.site_name = options.site or queue.name
        self.params = SiteParams(
            capacity=options.capacity,
            start_delay=options.start_delay,
            runtime=options.runtime,
            fail_when_over=options.fail_when_over,
            drain_time=options.drain_time,
            refuse=parse_windows(options.refuse) if options.refuse else (),
        )
        w = world()
        w.site(self.site_name, self.params)

    def _site(self) -> tuple[SimWorld, SimSite]:
        # the world may have been reset (a new simulation) since this plugin was built
        w = world()
        return w, w.site(self.site_name, self.params)

    def target(self) -> str:
        return f"sim:{self.site_name}"

    def submit(self, n: int, tags: PilotTags, now: float) -> Sequence[Pilot]:
        if n <= 0:
            return []
        w, site = self._site()
        with w.lock:
            return site.submit(n, tags, now)

    def cancel(self, backend_ids: Sequence[str]) -> None:
        w, site = self._site()
        with w.lock:
            site.cancel(backend_ids, w.clock.now())

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        w, site = self._site()
        with w.lock:
            site.retire(backend_ids, kill, w.clock.now())


class SimStatus(BatchStatusPlugin):
    """One poller per simulated site: every pilot of this factory there, plus those that ended
    within the last hour."""

    name = "Sim"

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        return (cls.name, _site_name(queue))

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        self.site_name = endpoint[1] if isinstance(endpoint, tuple) else str(endpoint)

    def poll(self, now: float) -> BatchSnapshot:
        w = world()
        with w.lock:
            site = w.get(self.site_name)
            pilots = site.snapshot(self.factory.factory_id, now) if site is not None else ()
        return BatchSnapshot(time=now, pilots=pilots)
