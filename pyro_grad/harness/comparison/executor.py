"""A comparison's fits as tasks on a ``concurrent.futures.Executor``: a local
``ProcessPoolExecutor``, a Dask cluster's ``distributed.Client(...).get_executor()``, or
Ray's.

* **One task per (config, seed).** Every task carries the whole comparison (model, guide,
  data, configs, optimizer: a :class:`~pyro_grad.harness.comparison.fits.Fits`), pickled once
  by cloudpickle. The script's functions and the modules defining the model and the
  guide travel by value (and ``reset``'s: :func:`program_modules`); other modules are imported by the
  worker. Whatever cannot travel is named before anything is sent.
* **Bit for bit the serial fit.** A task seeds itself from its seed, starts from a
  cleared param store, the configs' networks as given and ``reset``, warms up untimed,
  and fits under the caller's torch thread count, default dtype and Pyro validation
  (:class:`ProcessSettings`). It
  carries nothing from earlier tasks.
* **The caller alone writes the store**, each fit as its result arrives, so
  ``fits.sqlite`` keeps its guarantees: a killed caller keeps every finished fit, and its
  claims expire, so the next call resumes.
* **A task whose worker dies is retried once**, then recorded as failed with the reason;
  the next call computes it again. An executor fails every task a dead worker held (a
  process pool, every task it held), not only the one that killed it, so the retries
  run one at a time, alone: a fit is recorded failed only when it killed its worker.
"""

import concurrent.futures as cf
import contextlib
import dataclasses
import io
import math
import multiprocessing
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional

import cloudpickle
import pyro
import pyro.poutine.util
import torch

from pyro_grad.harness.comparison.ledger import Key, Ledger
from pyro_grad.harness.comparison.progress import FitLog
from pyro_grad.errors import EstimatorError, first_line

#: Seconds between the caller's heartbeats for the fits its tasks are computing.
HEARTBEAT_SECONDS = 60.0
POLL_SECONDS = 1.0
#: How Dask (``KilledWorker``) and Ray say a task's worker died, beyond
#: ``concurrent.futures.BrokenExecutor``.
WORKER_LOST = {"KilledWorker", "WorkerCrashedError", "NodeDiedError", "ActorDiedError"}

# Pyro's param store and torch's generator are per process, so two fits in threads of
# one worker process (a Dask worker with --nthreads 2, a ThreadPoolExecutor) would
# overwrite each other's parameters: a process computes one fit at a time.
_ONE_RUN_PER_PROCESS = threading.Lock()

class _Gone:
    """The referent of a weak reference that travelled: gone on arrival."""


def _dead_reference() -> weakref.ReferenceType:
    return weakref.ref(_Gone())  # the only reference to _Gone() is dropped here


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, with weak references sent dead. Pyro hangs one on every parameter it
    has seen (``param.unconstrained``, into the param store), which plain pickle refuses;
    a weak reference promises nothing about its referent, and every fit starts from a
    cleared param store that sets it again."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, weakref.ReferenceType):
            return _dead_reference, ()
        return super().reducer_override(obj)


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer).dump(obj)
    return buffer.getvalue()


def program_modules(*programs: Any) -> List[str]:
    """The modules that define the model, the guide and ``reset`` (a function's, or a bound
    method's class's), which travel by value. Pickled by reference, a function would run on the
    worker's own import of its module, beside by-value copies of that module's objects
    reached another way (``reset=NET.reset`` next to a model that reads ``NET``): two
    networks, one reset and the other trained. pyro_grad's own modules, except its
    models, and ``__main__`` (by value already) are left out."""
    modules = []
    for program in programs:
        for obj in (program, getattr(program, "__self__", None)):
            name = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
            if obj is None or name is None or name == "__main__" or name not in sys.modules:
                continue
            if name.split(".")[0] in ("builtins", "pyro", "torch") or (
                    name.startswith("pyro_grad.") and not name.startswith("pyro_grad.harness.models")):
                continue
            modules.append(name)
    return list(dict.fromkeys(modules))


@contextlib.contextmanager
def _by_value(modules: List[str]) -> Iterator[None]:
    added = [m for m in modules if m not in cloudpickle.list_registry_pickle_by_value()]
    for name in added:
        cloudpickle.register_pickle_by_value(sys.modules[name])
    try:
        yield
    finally:
        for name in added:
            cloudpickle.unregister_pickle_by_value(sys.modules[name])


def pack(fits: Any) -> bytes:
    """The comparison as bytes for the workers, or one error naming what cannot travel."""
    with _by_value(program_modules(fits.model, fits.guide, fits.reset)):
        try:
            return _dumps(fits)
        except Exception as error:
            why, part = _describe(error), _unpicklable_part(fits)
    raise EstimatorError(f"cannot send the fits to the executor's workers: {part} cannot be pickled ({why}); "
                         "pass data rather than open files, locks or connections, or compare without an executor")


def _unpicklable_part(fits: Any) -> str:
    parts = {"the model": fits.model, "the guide": fits.guide, "reset": fits.reset, "optim": fits.optim,
             "the objective": fits.objective}
    parts.update({f"argument {i}": value for i, value in enumerate(fits.args)})
    parts.update({f"keyword argument {name!r}": value for name, value in fits.kwargs.items()})
    parts.update({f"config {label!r}": config for label, config in fits.configs.items()})
    for name, value in parts.items():
        try:
            _dumps(value)
        except Exception:
            return name
    return "the comparison"


def check_executor(executor: Any) -> None:
    if executor is not None and not isinstance(executor, cf.Executor):
        raise EstimatorError(
            "executor must be None or a concurrent.futures.Executor, such as a ProcessPoolExecutor or a "
            f"Dask cluster's distributed.Client(...).get_executor(), got {type(executor).__name__}"
        )


def local_pool(workers: int) -> cf.ProcessPoolExecutor:
    """``workers`` local processes, as ``pyro-grad compare --workers`` and the main job
    use: spawned (a forked child inherits torch's thread pool mid-use), each with
    cores ÷ workers torch threads (more would compete for the cores), and each ending
    when this process dies (a pool's processes otherwise outlive a killed parent)."""
    threads = max(1, usable_cores() // workers)
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_start_worker, initargs=(os.getpid(), threads))


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container may limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _start_worker(parent: int, threads: int) -> None:
    torch.set_num_threads(threads)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True, name="exit-with-parent").start()


def fit_task(payload: bytes, label: str, seed: int, settings: "ProcessSettings", attempt: int) -> Dict[str, Any]:
    """A worker's task: the fit of config ``label`` with ``seed``. ``attempt`` tells a
    retry from the first try (Dask would otherwise hand back the first try's result for
    the same arguments)."""
    try:
        fits = cloudpickle.loads(payload)
    except Exception as error:
        raise EstimatorError(
            f"a worker cannot load the fits ({type(error).__name__}: {first_line(error)}): install the "
            "modules the model, guide and configs import on every worker, or define them in the script "
            "(cloudpickle carries a script's own functions by value)"
        ) from None
    with _ONE_RUN_PER_PROCESS, settings.applied():
        fits.warm_up(label, seed)
        return fits.fit(label, seed)


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    """The calling process's settings that a fit's numbers depend on: torch's thread
    count (floating-point sums are split by thread), default dtype, and Pyro's validation
    (which refuses some fits)."""

    threads: int
    dtype: torch.dtype
    validation: bool

    @classmethod
    def here(cls) -> "ProcessSettings":
        return cls(torch.get_num_threads(), torch.get_default_dtype(), pyro.poutine.util.is_validation_enabled())

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        previous = ProcessSettings.here()
        self._apply()
        try:
            yield
        finally:
            previous._apply()

    def _apply(self) -> None:
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.dtype)
        pyro.enable_validation(self.validation)


def is_worker_lost(error: BaseException) -> bool:
    return isinstance(error, cf.BrokenExecutor) or type(error).__name__ in WORKER_LOST


def lost_record(reason: str) -> Dict[str, Any]:
    """A fit lost with its worker twice: failed, with no figures, and marked ``lost`` so
    that the next call computes it again rather than reusing it."""
    return {"status": "failed", "reason": reason, "step": 0, "elbo": [], "checkpoints": [],
            "seconds": math.nan, "cpu seconds": math.nan, "evaluations": 0, "posterior": {}, "notes": [],
            "lost": True}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}"


class _Tasks:
    """The claimed fits on the executor; each result stored as it arrives."""

    def __init__(self, executor: cf.Executor, payload: bytes, ledger: Ledger,
                 stored: Callable[[Key, Dict[str, Any]], None]):
        self.executor, self.payload, self.ledger, self.stored = executor, payload, ledger, stored
        self.settings = ProcessSettings.here()
        self.keys: List[Key] = []
        self.submitted = False  # a task of this call has been sent
        self.beat = time.monotonic()

    def run(self, keys: List[Key]) -> None:
        self.keys = keys
        lost = self._round(self.executor, keys, attempt=1)
        for key, reason in self._alone(list(lost)).items():
            self._store(key, lost_record(f"its worker died twice ({lost[key]}; then {reason})"))

    def _alone(self, keys: List[Key]) -> Dict[Key, str]:
        """The second try: each fit alone, one after another, so that a worker's death is
        charged to the fit it ran (an executor fails every task its dead worker held, and
        a process pool every task it held). A process pool breaks for good when a process
        dies, so these go to a one-process pool of its own, replaced when it breaks.
        Returns the fits whose worker died again, and why."""
        own = isinstance(self.executor, cf.ProcessPoolExecutor)
        # Started as the executor's processes are: start method (fork, spawn), initializer.
        like = {"mp_context": getattr(self.executor, "_mp_context", None),
                "initializer": getattr(self.executor, "_initializer", None),
                "initargs": getattr(self.executor, "_initargs", ())}
        again: Dict[Key, str] = {}
        pool: Optional[cf.Executor] = None if own else self.executor
        try:
            for key in keys:
                pool = pool or cf.ProcessPoolExecutor(max_workers=1, **like)
                died = self._round(pool, [key], attempt=2)
                again.update(died)
                if died and own:
                    pool.shutdown(wait=True)
                    pool = None
        finally:
            if own and pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return again

    def _round(self, pool: cf.Executor, keys: List[Key], attempt: int) -> Dict[Key, str]:
        """Fit ``keys`` on ``pool``; returns the keys lost with their worker, and why."""
        futures: Dict[cf.Future, Key] = {}
        lost: Dict[Key, str] = {}
        for key in keys:
            try:
                futures[pool.submit(fit_task, self.payload, *key, self.settings, attempt)] = key
                self.submitted = True
            except cf.BrokenExecutor as error:
                if not self.submitted:
                    raise EstimatorError(f"the executor is broken ({first_line(error)}): a worker process "
                                         "died before this call; pass a new one") from None
                lost[key] = _describe(error)
            except RuntimeError as error:  # shut down
                raise EstimatorError(f"the executor takes no more tasks ({first_line(error)}); "
                                     "pass one that is running") from None
        failure: Optional[BaseException] = None
        try:
            while futures and failure is None:
                done, _ = cf.wait(futures, timeout=HEARTBEAT_SECONDS, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    key = futures.pop(future)
                    try:
                        record = future.result()
                    except BaseException as error:
                        if is_worker_lost(error):
                            lost[key] = _describe(error)
                        elif failure is None and isinstance(error, ImportError):
                            failure = EstimatorError(
                                f"a worker cannot run the task ({_describe(error)}): install pyro-grad, the "
                                "same version as here, on every worker")
                        elif failure is None:
                            failure = error  # a mistake in the configuration: every fit would make it
                        continue
                    self._store(key, record)
                if time.monotonic() - self.beat > HEARTBEAT_SECONDS:  # every claim still to store, queued too
                    self.ledger.heartbeat(k for k in self.keys if k not in self.ledger.records)
                    self.beat = time.monotonic()
        finally:
            for future in futures:
                future.cancel()
        if failure is not None:
            raise failure
        return lost

    def _store(self, key: Key, record: Dict[str, Any]) -> None:
        self.ledger.put(key, record)
        self.stored(key, record)


def fit_on_executor(executor: Any, fits: Any, ledger: Ledger) -> None:
    """Compute the ledger's pending fits as tasks on ``executor``, storing each as it
    arrives, with a progress bar over tasks; fits another process holds are waited for."""
    pending = ledger.pending()
    if not pending:
        return
    from tqdm.auto import tqdm

    payload = pack(fits)
    progress = tqdm(total=len(pending), disable=not sys.stderr.isatty(), desc="compare", unit="fit")
    log = FitLog(len(pending))

    def stored(key: Key, record: Dict[str, Any]) -> None:
        progress.update(1)
        log.stored(key, record)

    tasks = _Tasks(executor, payload, ledger, stored)
    claimed: List[Key] = []
    try:
        waiting = pending
        while True:
            held = []
            for key in waiting:
                claim = ledger.claim(key)
                if claim == "claimed":
                    claimed.append(key)
                elif claim == "held":
                    held.append(key)
            tasks.run([key for key in claimed if key not in ledger.records])
            if not held:
                break
            time.sleep(POLL_SECONDS)  # fits other processes hold: wait, or take over a dead one's
            waiting = held
    finally:
        progress.close()
        ledger.release(claimed)
