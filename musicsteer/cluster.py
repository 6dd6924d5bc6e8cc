"""`--ray [ADDRESS]`: running `probe extract` and `eval` on the GPUs (or CPUs) of a Ray cluster.

One actor per GPU holds the model (loaded once, by a factory the caller gives); the driver (this
process) plans the work, ships it in items, and writes every result itself as it comes back. So the
cache and the clips live only on the driver's disk, worker nodes need no shared file system, and the
resumable on-disk record is the single-process one: a killed run (driver, actor or node) keeps what
it wrote, and the same command resumes it, with or without Ray.

Actors: one per GPU of the cluster (num_gpus=1); on a cluster without GPUs, one per `cpus` CPUs.
Ray is an optional extra (`pip install 'musicsteer[ray]'`): it is imported here, when a command asks
for it, and nowhere else. Why Ray: it is the field's tool for exactly this (a Python actor per GPU,
an object store to move arrays between nodes, `ray start` to join nodes), so a researcher's existing
cluster runs musicsteer as it runs their training jobs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from musicsteer.engine.errors import MusicsteerError, one_line
from musicsteer.engine.loading import ModelFacts

EXTRA = "pip install 'musicsteer[ray]'"
IN_FLIGHT = 2  # items queued per actor: one running, one waiting, so no actor idles between items
CONNECT_S = 5.0  # seconds a Ray head has to accept a TCP connection
LOCAL = ""  # --ray with no ADDRESS: RAY_ADDRESS, else the cluster `ray start` made here, else a new local one


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MusicsteerError(f"--ray needs Ray, which is not installed; {EXTRA}") from None
    return ray


def connect(address: str = LOCAL) -> Any:
    """Join the Ray cluster at `address` (host:port or "auto"; ray://host:port with Ray's client extra)
    or, for LOCAL, the one ray.init finds ($RAY_ADDRESS, checked like an address) or starts. Returns
    the `ray` module. One MusicsteerError line when it cannot."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the cluster unless its owner says so
    ray = _ray()
    if ray.is_initialized():
        return ray
    named = address or os.environ.get("RAY_ADDRESS", "")
    _check_reachable(named)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        # log_to_driver off: the actors report through their results, and a dying raylet's state dumps
        # would bury the one line that says what happened
        with stopped_on_interrupt(ray):  # a half-started local cluster too
            ray.init(address=address or None, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
    except Exception as e:  # ConnectionError, ValueError, RuntimeError: whatever the address did
        where = f"at {named!r}" if named else "on this machine"
        hint = ""
        if os.environ.get("RAY_AUTH_MODE") is None:
            # Ray >= 2.60's `ray start` makes heads that want a token, but Ray sends one to an explicit
            # address only in token mode (never your token to an address by default): say what to set.
            hint = ("; if the head uses token authentication (`ray start`'s default since Ray 2.60), set "
                    "RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token as on the head)")
        raise MusicsteerError(f"cannot start or join a Ray cluster {where}: {_cause(e)}{hint}") from None
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # ray.init replaces it; the CLI's handler ends us in one line
    return ray


@contextmanager
def stopped_on_interrupt(ray: Any) -> Iterator[None]:
    """Ctrl-C inside: stop Ray here, then let the interrupt go on. The CLI ends an interrupted run with
    os._exit (cli.entry), which skips Ray's own atexit shutdown, so a local cluster's agents (or a
    half-started one's) would outlive the command."""
    try:
        yield
    except KeyboardInterrupt:
        ray.shutdown()
        raise


def _check_reachable(address: str) -> None:
    """A head's host:port (or ray://host:port) must answer a TCP connect within CONNECT_S: ray.init
    would retry a dead address for minutes, printing warnings, before it gave up."""
    if address in (LOCAL, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MusicsteerError(f"Ray address {address!r} (--ray or $RAY_ADDRESS) is not an address: give HOST:PORT "
                              "of the Ray head (e.g. 10.0.0.1:6379), 'auto', or nothing for a local cluster")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except OSError as e:
        raise MusicsteerError(f"no Ray head answers at {address} ({e.strerror or type(e).__name__}); start one "
                              "there with `ray start --head`, or check the address") from None


@dataclass(frozen=True)
class Failed:
    """A user's error (MusicsteerError) in an actor, sent back as a value: the driver raises it as the
    one line it is, and Ray prints no actor traceback for it."""

    kind: type[MusicsteerError]
    message: str


class Worker:
    """What each actor runs: `state = factory()` once (the loaded model), then `call(fn, item)` =
    `fn(state, item)` per item. `fn` and `factory` are module-level functions of musicsteer, which
    every node has installed, so they travel by name."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.state, self.failed = None, None
        try:
            self.state = factory()
        except MusicsteerError as e:  # e.g. the model is not on this node: every call answers it
            self.failed = Failed(type(e), str(e))

    def call(self, fn: Callable[[Any, Any], Any], item: Any) -> Any:
        if self.failed is not None:
            return self.failed
        try:
            return fn(self.state, item)
        except MusicsteerError as e:
            return Failed(type(e), str(e))


@contextmanager
def pool(factory: Callable[[], Any], cpus: int = 1, address: str = LOCAL, device: str = "auto") -> Iterator[Pool]:
    """`with pool(factory, cpus) as actors:` joins or starts the cluster (`connect`), starts the actors
    (`Pool`), and kills them when the block ends; Ctrl-C anywhere in it also stops Ray here."""
    ray = connect(address)
    with stopped_on_interrupt(ray):
        actors = Pool(ray, factory, cpus, device)
        try:
            yield actors
        finally:
            actors.close()


class Pool:
    """The actors of one command (`pool` starts and ends them), `map` feeds them. `device` is the
    command's --device: "cpu" places actors by CPUs even on a cluster with GPUs."""

    def __init__(self, ray: Any, factory: Callable[[], Any], cpus: int, device: str) -> None:
        self.ray = ray
        resources = ray.cluster_resources()
        total_cpus = int(resources.get("CPU", 0))
        gpus = 0 if device == "cpu" else int(resources.get("GPU", 0))  # --device cpu: the GPUs are not ours
        if device.startswith("cuda") and not gpus:
            raise MusicsteerError(f"--device {device}, but the Ray cluster has no GPU; use --device cpu or auto")
        if gpus:
            count, options = gpus, {"num_gpus": 1, "num_cpus": min(cpus, max(1, total_cpus // gpus))}
        else:
            count, options = max(1, total_cpus // cpus), {"num_gpus": 0, "num_cpus": min(cpus, max(1, total_cpus))}
        actor = ray.remote(**options)(Worker)
        self.actors = [actor.remote(factory) for _ in range(count)]
        each = "1 GPU" if gpus else f"{options['num_cpus']} CPU(s)"
        self.description = f"{count} Ray actor(s), each {each}"
        # said before the wait: on a busy cluster the actors wait for free GPUs/CPUs, and silence looks hung
        print(f"starting {self.description} (each loads the model; they wait while the cluster is busy)",
              flush=True)

    def each(self, fn: Callable[[Any, Any], Any], item: Any = None) -> list[Any]:
        """`fn(state, item)` on every actor (e.g. what model it loaded), in actor order."""
        return self._get([a.call.remote(fn, item) for a in self.actors])

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """`fn(state, item)` for every item, IN ANY ORDER, as each finishes. At most IN_FLIGHT items per
        actor are out at once, so a large collection is never all in the object store; `items` is read
        lazily, as actors free up."""
        ray, items = self.ray, iter(items)
        free = [a for a in self.actors for _ in range(IN_FLIGHT)]
        running: dict[Any, Any] = {}
        while True:
            while free:
                item = next(items, _END)
                if item is _END:
                    break
                actor = free.pop(0)
                running[actor.call.remote(fn, item)] = actor
            if not running:
                return
            done, _ = ray.wait(list(running), num_returns=1)
            free.append(running.pop(done[0]))
            yield self._get(done)[0]

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def _get(self, refs: list[Any]) -> list[Any]:
        try:
            results = self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as e:  # a bug in an item's code (a user's error is `Failed`)
            raise MusicsteerError(f"a Ray actor failed ({_cause(e.cause or e)}); what was written is kept (this is "
                                  "a fault of musicsteer or a library it uses, not of your input)") from None
        except self.ray.exceptions.RayError as e:  # an actor or node died, an object was lost
            raise MusicsteerError(f"the Ray cluster lost work ({_cause(e)}); what was written is kept: "
                                  "run the same command again to resume") from None
        for result in results:
            if isinstance(result, Failed):
                raise result.kind(result.message)
        return results


_END = object()


def one_model(pool: Pool) -> ModelFacts:
    """The facts of the model every actor loaded (each actor's state has `.lm`); a MusicsteerError when
    two differ (another checkpoint, dtype or device kind on some node), since their results would mix."""
    facts = pool.each(_facts)
    kinds = {(f.fingerprint, f.weights_digest, f.dtype, f.device.type) for f in facts}
    if len(kinds) > 1:
        raise MusicsteerError("the Ray actors loaded different models (" + "; ".join(
            f"{name} {digest} {dtype} on {device}" for name, digest, dtype, device in sorted(kinds, key=str))
            + "): give every node the same weights and the same --device/--dtype")
    return facts[0]


def _facts(state: Any, _: Any) -> ModelFacts:
    return state.lm.facts


def _cause(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return one_line(f"{type(error).__name__}: {lines[-1] if lines else ''}", 240)
