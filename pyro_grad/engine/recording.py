"""Record an objective's step once, and run it after as one flat tensor function.

A ``pg.ELBO`` step pays Pyro's per-run machinery on every call: handlers, messages,
distribution construction and validation, and the engine's own bookkeeping. None of it
changes from step to step on a program whose structure is fixed. So, with ``compile=``:

1. The first calls run as they always do (an ELBO's first step watches its pathwise
   sites for jumps and decides what ``"auto"`` sums out).
2. The next ordinary call is *recorded*: while it runs for real, the whole step, the
   surrogate and its gradient with respect to every leaf it reaches, is traced at the
   level of torch's operators (``torch.fx.experimental.proxy_tensor.make_fx``). Pyro, the
   engine and the user's Python run once; what remains is the graph of tensor
   operations, random draws included, of (parameters, arguments, baseline state).
3. Later calls run that graph, with no poutine handler on the path: as recorded
   (``backend="trace"``), or compiled by TorchInductor (``backend="inductor"``, torch's
   ``torch.compile`` backend, applied to the recorded graph).
   Every call draws anew; under ``"trace"`` the draws are those the uncompiled step
   makes from the same random state, so the two agree to the bit.

A recorded call returns the surrogate's value with the recorded gradients attached
(:class:`Precomputed`): ``.backward()`` fills every parameter's ``.grad`` as the
uncompiled surrogate would, and ``pyro.param`` is called for each parameter the step
reads, so ``pyro.infer.SVI`` sees and steps them. (Its graph ends there: no second
derivative, no forward mode.)

What a recording assumes is checked before every call (:class:`Signature`): the
programs, the arguments' shapes, dtypes and non-tensor values, the parameters' names and
shapes, the baselines' state, and the ``pg.estimators`` handlers around the call. When
one changes the step is recorded again, and the log says what changed. Whatever an
uncompiled step finds (a site's estimator, its shape, a site appearing) is compared with
the recording on every step that runs uncompiled (an ELBO's periodic watch for jumps,
say), and a difference records again. Python that a recording cannot see, a branch on
a global flag or a counter, is baked in as ``torch.jit.trace`` bakes it; pass such
values as arguments.

A step that cannot be recorded, one that reads a tensor into Python (``.item()``, an
``if`` on a draw, a decaying baseline's float), or that differentiates a tensor that is
neither an argument nor a ``pyro.param``, runs uncompiled, with one logged line
(``pyro_grad.compile``, WARNING) that says why; with ``fullgraph=True`` it raises instead.
A failed attempt leaves nothing behind: the random state and the baselines are restored,
and the step runs uncompiled from the same draws.
"""

import contextlib
import logging
import os
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.runtime import am_i_wrapped, apply_stack
from pyro.util import get_rng_state, set_rng_state
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_grad.baselines import STATE, RunningAverages
from pyro_grad.engine.assumptions import assumptions
from pyro_grad.engine.provenance import plain
from pyro_grad.errors import EstimatorError, first_line

logger = logging.getLogger("pyro_grad.compile")

#: How a recorded step runs: as recorded, or compiled by ``torch.compile``.
BACKENDS = ("inductor", "trace")
#: Recordings dropped for a changed decision on values before the step is no longer recorded.
CHURN = 3


class CompileOptions(NamedTuple):
    """``compile=`` of an objective: ``True`` is ``{"backend": "inductor"}``; ``"auto"``
    is ``{"backend": "trace"}`` where a step can be recorded, quietly uncompiled where it
    cannot (the refusal logged at INFO): the same draws and answers as uncompiled."""

    backend: str = "inductor"
    #: Raise where the step cannot be recorded, instead of running it uncompiled.
    fullgraph: bool = False
    #: ``compile="auto"``: refusals are logged at INFO, not WARNING.
    auto: bool = False


def compile_options(compile: Any) -> Optional[CompileOptions]:
    """``compile=`` checked: False or None (uncompiled), True, ``"auto"``, or a dict of
    ``backend`` and ``fullgraph``."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return CompileOptions()
    if isinstance(compile, str) and compile == "auto":
        return CompileOptions(backend="trace", auto=True)
    if isinstance(compile, dict):
        keys = ("backend", "fullgraph")
        unknown = sorted(set(compile) - set(keys))
        if unknown:
            raise EstimatorError(f"compile= takes the keys {list(keys)}, got {unknown[0]!r}")
        options = CompileOptions(**compile)
        if options.backend not in BACKENDS:
            raise EstimatorError(f"compile's backend must be one of {list(BACKENDS)}, got {options.backend!r}")
        if not isinstance(options.fullgraph, bool):
            raise EstimatorError(f"compile's fullgraph must be True or False, got {options.fullgraph!r}")
        return options
    raise EstimatorError(
        f"compile= must be True, False, 'auto' or a dict such as {{'backend': 'trace'}}, got {compile!r}"
    )


def handlers_around() -> Tuple:
    """What the handlers around the call do to a message: the ``pg.estimators`` handlers
    answer one of their own (``EstimatorMessenger._pyro_estimator_handlers``) with their
    choices, and Pyro's ``scale`` and ``mask`` handlers scale and mask it as any site.
    (Pyro's ``condition``, ``replay`` and ``block`` act on named sites only: what they
    do is seen by the uncompiled steps' comparison of sites.)"""
    if not am_i_wrapped():
        return ()
    found: List = []
    msg = {"type": "estimator_handlers", "name": None, "fn": lambda: None, "is_observed": False, "args": (),
           "kwargs": {}, "value": None, "scale": 1.0, "mask": None, "cond_indep_stack": (), "done": False,
           "stop": False, "continuation": None, "infer": {"handlers": found}}
    apply_stack(msg)
    return (tuple(found), as_value(msg["scale"]), as_value(msg["mask"]),
            tuple((f.name, f.size, f.dim) for f in msg["cond_indep_stack"]))


def as_value(x: Any) -> Any:
    """A scale or mask as a comparable value."""
    return tuple(x.detach().reshape(-1).tolist()) if torch.is_tensor(x) else x


def choices_of(program: Any) -> tuple:
    """What a program's own ``pg.estimators`` wrappers choose (their configs are held by
    reference, so a change of them shows here)."""
    found: list = []
    while program is not None:
        messenger = getattr(program, "messenger", None)
        if messenger is not None and hasattr(messenger, "choices"):
            found.append(messenger.choices())
        program = getattr(program, "fn", None)
    return tuple(found)


@contextlib.contextmanager
def modules_called() -> Iterator[Dict[int, torch.nn.Module]]:
    """The modules whose forward runs inside the block (their train or eval mode, which
    dropout and batch norm follow, is part of what a recording assumes)."""
    found: Dict[int, torch.nn.Module] = {}

    def seen(module: torch.nn.Module, _: Any) -> None:
        found.setdefault(id(module), module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(seen)
    try:
        yield found
    finally:
        handle.remove()


#: Arguments a recording can take: tensors (inputs), modules (by identity and mode),
#: containers of them, and values compared by ``==``.
PLAIN = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size, slice, range)


class Opaque(NamedTuple):
    """An argument a recording cannot take: an object that may hold tensors (a dataclass,
    an array), which the graph would bake."""

    kind: str


def _described(value: Any) -> Any:
    """What a recording assumes of one argument: a tensor's shape, strides, dtype, device
    and whether it requires grad; a module's identity and mode; a plain value itself."""
    if torch.is_tensor(value):
        return ("tensor", value.shape, value.stride(), value.dtype, value.device, value.requires_grad)
    if isinstance(value, torch.nn.Module):
        return ("module", id(value), tuple(m.training for m in value.modules()))
    if isinstance(value, PLAIN):
        return ("value", type(value), value)
    return Opaque(type(value).__name__)


def aliases(tensors: Sequence[torch.Tensor]) -> tuple:
    """For each tensor, the index of its first occurrence (the same tensor passed twice)."""
    first: Dict[int, int] = {}
    return tuple(first.setdefault(id(t), i) for i, t in enumerate(tensors))


class Signature(NamedTuple):
    """What a recording assumes, compared by ``==`` before every call."""

    programs: tuple
    arguments: tuple
    params: tuple
    states: tuple
    handlers: tuple
    modes: tuple

    def change(self, other: "Signature") -> str:
        """What differs from ``other``, in words."""
        for field, words in (("programs", "the programs or their estimators"),
                             ("arguments", "the arguments' shapes or values"),
                             ("params", "the parameters' names, shapes, dtypes or requires_grad"),
                             ("states", "the baselines' state"),
                             ("handlers", "the handlers around the call"),
                             ("modes", "a module's train or eval mode")):
            if not same(getattr(self, field), getattr(other, field)):
                return words
        return "nothing"

    def opaque(self) -> Optional[str]:
        """The type of an argument a recording cannot take, if any."""
        return next((d.kind for d in self.arguments[1] if isinstance(d, Opaque)), None)


def same(a: Any, b: Any) -> bool:
    """``a == b``, False where comparing raises or is not a bool."""
    try:
        return bool(a == b)
    except Exception:
        return False


def flattened(args: tuple, kwargs: dict) -> Tuple[list, tuple]:
    """The arguments' leaves (inside tuples, lists and dicts), and their structure."""
    if not kwargs and not any(isinstance(v, (tuple, list, dict)) for v in args):
        # The common call, f(theta, data): what visit gives, without its recursion (this
        # runs before every compiled call).
        return list(args), (("tuple", (None,) * len(args)), ("dict", ()))
    leaves: list = []

    def visit(value: Any) -> Any:
        if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
            return (type(value).__name__, tuple(visit(v) for v in value))
        if isinstance(value, dict):
            return ("dict", tuple((k, visit(v)) for k, v in value.items()))
        leaves.append(value)
        return None

    structure = (visit(tuple(args)), visit(dict(kwargs)))
    return leaves, structure


def signature(programs: tuple, flat: list, structure: tuple, states: Sequence[RunningAverages],
              modules: Sequence[torch.nn.Module] = ()) -> Signature:
    store = pyro.get_param_store()
    tensors = [v for v in flat if torch.is_tensor(v)]
    return Signature(
        tuple((program, choices_of(program)) for program in programs),
        (structure, tuple(_described(v) for v in flat), aliases(tensors)),
        # The unconstrained tensor's identity: a parameter created anew (another
        # constraint, say) is another input, recorded again.
        tuple((name, id(p), p.shape, p.stride(), p.dtype, p.device, p.requires_grad)
              for name, p in store.named_parameters()),
        tuple(tuple((key, t.shape, t.stride(), t.dtype) for key, t in sorted(state.items())) for state in states),
        handlers_around(),
        tuple(m.training for m in modules),
    )


def fingerprint(traces: Sequence) -> tuple:
    """The structure an uncompiled step found: every sample site of its traces, with its
    distribution, shape, observation and estimator."""
    found = []
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "sample":
                found.append((name, type(site["fn"]).__name__, tuple(getattr(site["value"], "shape", ())),
                              site["is_observed"], repr(site["infer"].get("estimator")),
                              site["infer"].get("enumerate")))
    return tuple(found)


def states_of(traces: Sequence) -> List[RunningAverages]:
    """The baselines' states the sites of ``traces`` read and write."""
    found: Dict[int, RunningAverages] = {}
    for trace in traces:
        for site in trace.nodes.values():
            state = site["infer"].get(STATE) if site["type"] == "sample" else None
            if isinstance(state, RunningAverages):
                found[id(state)] = state
    return list(found.values())


class Precomputed(torch.autograd.Function):
    """``value``, whose gradient with respect to each of ``leaves`` is ``grads`` (None
    where ``reached`` says the step's gradient does not reach the leaf, as backward
    leaves its ``.grad``). The gradients are saved tensors, freed after a backward
    without ``retain_graph``, so a second one raises as autograd's does."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: tuple, reached: tuple, *leaves: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(*grads)
        ctx.reached = reached
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grads = ctx.saved_tensors
        return (None, None, None, *(g * grad_output if r else None for g, r in zip(grads, ctx.reached)))


class Recording(NamedTuple):
    """A recorded step: ``run(*inputs)`` gives ``(value, *grads, *new states)``."""

    signature: Signature
    fingerprint: tuple
    run: Callable
    param_names: Tuple[str, ...]
    #: Positions, among the flattened arguments, of the tensor inputs.
    arguments: Tuple[int, ...]
    #: Which inputs the step's gradient reaches (the others' .grad stays as it was).
    reached: Tuple[bool, ...]
    #: (state, key) of each baseline state, an input and an output.
    states: Tuple[Tuple[RunningAverages, str], ...]
    #: The engine's decisions on values the recording took (:mod:`.assumptions`),
    #: checked after every run: its last outputs.
    assumed: Tuple[bool, ...] = ()
    #: :func:`aliases` of the inputs before the same tensor passed twice became one.
    aliases: tuple = ()


class Unrecordable(Exception):
    """Why a step cannot be recorded."""


class Recorder:
    """Records one objective's step and runs it flat (module docs). ``owner`` names the
    objective in messages."""

    def __init__(self, owner: str, options: CompileOptions):
        self.owner = owner
        self.options = options
        self.recording: Optional[Recording] = None
        #: What the last uncompiled step found, and the states its sites use.
        self.seen: Optional[tuple] = None
        self.states: List[RunningAverages] = []
        self.param_names: Tuple[str, ...] = ()
        #: The modules the last uncompiled step ran.
        self.modules: List[torch.nn.Module] = []
        #: The signature a recording was refused for, and why (refused once, logged once).
        self.refused: Optional[Tuple[Signature, str]] = None
        #: Seconds the last recording took, and its backend's first (compiling) call.
        self.record_seconds: Optional[float] = None
        self.compile_seconds: Optional[float] = None
        self._compiled: Optional[Callable] = None
        #: How the last step ran: "uncompiled", "recorded" or "flat".
        self.last: Optional[str] = None
        #: Why the last recording was dropped (None: none was).
        self.dropped: Optional[str] = None
        #: Recordings dropped as a decision on values changed: after CHURN of them the
        #: step is no longer recorded (each recording costs a step's tracing).
        self.changed_decisions = 0

    def step(self, run: Callable[[], Tuple[torch.Tensor, Sequence]], programs: tuple, args: tuple, kwargs: dict,
             ordinary: bool) -> torch.Tensor:
        """The surrogate of one step: ``run()`` gives it uncompiled, with its traces.
        ``ordinary`` says whether the objective would run this step as every other
        (no watch, no first-step decisions): only such a step is recorded or replaced."""
        if not torch.is_grad_enabled():
            return run()[0]
        flat, structure = flattened(args, kwargs)
        current = signature(programs, flat, structure, self.states, self.modules)
        if ordinary and self.recording is not None:
            if same(current, self.recording.signature):
                return self._flat(run, flat)
            # The step after a change runs uncompiled: it finds the parameters, states and
            # sites the next recording takes.
            self._drop(f"{current.change(self.recording.signature)} changed")
            return self._uncompiled(run)
        if not ordinary or self.seen is None or (self.refused is not None and same(self.refused[0], current)):
            return self._uncompiled(run)
        return self._record(run, current, flat)

    def _uncompiled(self, run: Callable) -> torch.Tensor:
        self.last = "uncompiled"
        with poutine.trace(param_only=True) as params, modules_called() as modules:
            value, traces = run()
        self.modules = list(modules.values())
        found = fingerprint(traces)
        if self.recording is not None and found != self.recording.fingerprint:
            self._drop("an uncompiled step found other sites or estimators")
        self.seen, self.states = found, states_of(traces)
        self.param_names = tuple(params.trace.nodes)
        return value

    def _inputs(self, param_names: Sequence[str], flat: list, arguments: Sequence[int], states) -> list:
        # pyro.param for each parameter: SVI collects the parameters it steps from these.
        params = [pyro.param(name).unconstrained() for name in param_names]
        return [*params, *(flat[i] for i in arguments), *(state.get(key) for state, key in states)]

    def _record(self, run: Callable, current: Signature, flat: list) -> torch.Tensor:
        if current.opaque() is not None:
            return self._refuse(run, current, Unrecordable(
                f"an argument of type {current.opaque()} may hold tensors, which a recording would bake; pass "
                "tensors, numbers, strings, modules, or lists, tuples and dicts of them"))
        arguments = tuple(i for i, v in enumerate(flat) if torch.is_tensor(v))
        states = tuple((state, key) for state in self.states for key, _ in sorted(state.items()))
        # The same tensor passed twice is one input (its gradient counted once).
        inputs = list({id(t): t for t in self._inputs(self.param_names, flat, arguments, states)}.values())
        wanted = [t for t in inputs if t.requires_grad]
        found: Dict[str, Any] = {}

        def step(*_: torch.Tensor) -> tuple:
            # The inputs are the very tensors the program reads (the store's parameters, the
            # arguments, the states), so make_fx makes each of them a placeholder.
            with assumptions() as assumed:
                value, traces = run()
            if tuple(captured.trace.nodes) != self.param_names:
                raise Unrecordable(f"it read the parameters {sorted(captured.trace.nodes)}, not the "
                                   f"{sorted(self.param_names)} of the step before")
            unreached = unreached_leaves(value, wanted)
            if unreached:
                raise Unrecordable(unreached)
            grads = list(torch.autograd.grad(value, wanted, allow_unused=True)) if value.requires_grad else []
            by_leaf = dict(zip(map(id, wanted), grads))
            found["reached"] = tuple(by_leaf.get(id(t)) is not None for t in inputs)
            outputs = [torch.zeros_like(t) if by_leaf.get(id(t)) is None else by_leaf[id(t)] for t in inputs]
            found["traces"], found["assumed"] = traces, tuple(v for _, v in assumed)
            # Plain tensors: a tensor subclass (provenance) is a new object make_fx does not
            # track, and would be recorded as a constant.
            found["outputs"] = tuple(plain(t) for t in (value.detach(), *outputs, *(s.get(k) for s, k in states)))
            return (*found["outputs"], *(plain(condition) for condition, _ in assumed))

        rng = get_rng_state()
        saved = [(state, state.copy()) for state in self.states]
        store = pyro.get_param_store()
        names = set(store.keys())
        start = time.perf_counter()
        try:
            with pyro.validation_enabled(False), poutine.trace(param_only=True) as captured:
                graph = make_fx(step, tracing_mode="real")(*inputs)
        except Exception as error:  # whatever the program did: it runs uncompiled, as before
            set_rng_state(rng)
            for state, copy in saved:
                state.restore(copy)
            for name in set(store.keys()) - names:  # created by the attempt: the uncompiled step creates it
                del store[name]
            return self._refuse(run, current, error)
        self.record_seconds = time.perf_counter() - start
        traces = found["traces"]
        if fingerprint(traces) != self.seen:
            logger.info("%s: the recorded step found other sites or estimators than the step before", self.owner)
        self.recording = Recording(current, fingerprint(traces), graph, self.param_names, arguments,
                                   found["reached"], states, found["assumed"],
                                   aliases(self._inputs(self.param_names, flat, arguments, states)))
        self._compiled = None
        self.last = "recorded"
        # The recording ran the step for real: its outputs are this call's.
        return self._returned(found["outputs"], inputs, states, found["reached"])

    def _refuse(self, run: Callable, current: Signature, error: BaseException) -> torch.Tensor:
        """Run the step uncompiled, and say once why it cannot be recorded."""
        why = why_unrecordable(error)
        if self.options.fullgraph:
            raise EstimatorError(f"{self.owner}(compile=...) cannot record this step: {why}") from error
        logger.log(logging.INFO if self.options.auto else logging.WARNING,
                   "%s: this step runs uncompiled, as it cannot be recorded: %s", self.owner, why)
        self.refused = (current, why)
        return self._uncompiled(run)

    def _flat(self, run: Callable, flat: list) -> torch.Tensor:
        recording = self.recording
        every = self._inputs(recording.param_names, flat, recording.arguments, recording.states)
        inputs = list({id(t): t for t in every}.values())
        if len(inputs) != len(recording.reached) or aliases(every) != recording.aliases:
            # A parameter passed as an argument too, say: other inputs than recorded.
            self._drop("the tensors passed alias one another otherwise")
            return self._uncompiled(run)
        rng = get_rng_state() if recording.assumed else None
        with torch.no_grad():  # the graph computes the gradients itself: nothing to record for autograd
            outputs = self._runner()(*inputs)
        checks = outputs[len(outputs) - len(recording.assumed):] if recording.assumed else ()
        if any(bool(c) != v for c, v in zip(checks, recording.assumed)):
            # A decision the recording took on values came out otherwise: nothing of this
            # run is kept, and the step runs uncompiled from the same random state.
            set_rng_state(rng)
            self._drop("a decision the engine took on values changed")
            self.changed_decisions += 1
            if self.changed_decisions >= CHURN:
                why = (f"the engine's decisions on values (whether a re-run changed a later site's distribution) "
                       f"changed {CHURN} times, so recordings would not last")
                self.refused = (recording.signature, why)
                logger.log(logging.INFO if self.options.auto else logging.WARNING,
                           "%s: this step runs uncompiled: %s", self.owner, why)
            return self._uncompiled(run)
        self.last = "flat"
        return self._returned(outputs, inputs, recording.states, recording.reached)

    def _drop(self, why: str) -> None:
        logger.info("%s: recording again, as %s", self.owner, why)
        self.recording, self._compiled, self.dropped = None, None, why

    def _runner(self) -> Callable:
        if self.options.backend == "trace":
            return self.recording.run
        if self._compiled is None:
            # Inductor on the recorded graph itself (torch._inductor.compile: "compile FX graphs
            # captured without TorchDynamo"): torch.compile would trace it again and guard
            # every call, which cost as much as a small program's step. The signature is
            # the guard: the same shapes, strides and dtypes as recorded.
            self._compiled = lambda *inputs: self._first_compiled(
                # No size asserts in the compiled code: the signature has checked them.
                lambda: torch._inductor.compile(self.recording.run, list(inputs), options={"size_asserts": False}),
                inputs)
        return self._compiled

    def _first_compiled(self, compile: Callable[[], Callable], inputs: tuple) -> tuple:
        start = time.perf_counter()
        rng = get_rng_state()
        try:
            compiled = compile()
            outputs = compiled(*inputs)
        except Exception as error:  # the compiler's limits, not the program's: run the graph as recorded
            set_rng_state(rng)
            logger.warning("%s: torch.compile failed (%s), so the recorded step runs as traced", self.owner,
                           first_line(error))
            compiled = self.recording.run
            outputs = compiled(*inputs)
        self.compile_seconds = time.perf_counter() - start
        self._compiled = compiled
        return outputs

    @staticmethod
    def _returned(outputs: tuple, inputs: List[torch.Tensor], states, reached: tuple) -> torch.Tensor:
        value, grads, new_states = outputs[0], outputs[1:1 + len(inputs)], outputs[1 + len(inputs):]
        for (state, key), new in zip(states, new_states):
            state.set(key, new)
        kept = [(t, g, r) for t, g, r in zip(inputs, grads, reached) if t.requires_grad]
        if not kept:
            return value
        return Precomputed.apply(value, tuple(g for _, g, _ in kept), tuple(r for _, _, r in kept),
                                 *(t for t, _, _ in kept))


def unreached_leaves(value: torch.Tensor, inputs: Sequence[torch.Tensor]) -> str:
    """Leaves the surrogate's gradient reaches that are not among ``inputs``, described
    (empty when there are none): their gradients would be lost in a recording."""
    known = {id(t) for t in inputs}
    # A non-leaf input (an argument computed from a leaf) ends the walk: its gradient is
    # handed to it, and autograd carries it on from there.
    ends = {t.grad_fn for t in inputs if t.grad_fn is not None}
    seen, stack, missing = set(), [value.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in ends:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in known:
            missing.append(f"a tensor of shape {tuple(variable.shape)}")
        stack.extend(next_node for next_node, _ in node.next_functions)
    if not missing:
        return ""
    return (f"its gradient reaches {missing[0]} that is neither an argument nor a pyro.param "
            "(pass it as an argument, or register it with pyro.param or pyro.module)")


def why_unrecordable(error: BaseException) -> str:
    """A failed recording's reason, in one line."""
    if isinstance(error, Unrecordable):
        return str(error)
    text = first_line(error)
    if "value out of a tracing tensor" in text or "data-dependent" in text:
        return ("the step reads a tensor into Python (.item(), an `if` on a value, a float()), "
                f"so each call may take another path{where_read(error)}")
    return f"{type(error).__name__}: {text}"


def where_read(error: BaseException) -> str:
    """`` (at file:line)``: the innermost frame of the failed recording outside torch."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(torch_dir)]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {os.sep.join(frame.filename.split(os.sep)[-3:])}:{frame.lineno})"
