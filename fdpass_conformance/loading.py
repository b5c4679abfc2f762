"""Turn ``--fdpass-impl=MODULE:ATTR`` values into validated implementation specs.

Everything that can be wrong with a value is found here, before any test
runs, and reported as one line naming the value and the problem: a typo in an
option must not surface as hundreds of identical test errors.
"""

from __future__ import annotations

import difflib
import importlib
import json
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

from .contract import check_impl, is_fd_passing

#: Shown with every malformed value, so that the fix is on the same line.
EXPECTED_FORM = "expected MODULE:ATTR, e.g. --fdpass-impl=reference:MasterProxy"

#: Implementations in other languages, run as a program behind the exec adapter.
EXEC_PREFIX = "exec:"
EXEC_FORM = "expected exec:COMMAND ARGS..., e.g. --fdpass-impl='exec:./build/masterproxy'"

#: Short module names of the toolkit's own proxies, used only where no module of
#: that name is importable: the wheel installs the references as
#: ``fdpass_conformance.reference`` and leaves the generic name ``reference`` to
#: the projects that use it, yet ``--fdpass-impl=reference:MasterProxy`` works
#: the same in this repository (whose ``reference/`` maps to it) and anywhere.
ALIASES = {"reference": "fdpass_conformance.reference"}


class ImplError(Exception):
    """One problem with one ``--fdpass-impl`` value, as a single printable line."""


@dataclass(frozen=True)
class ImplSpec:
    """A validated implementation: where it came from and how to make new proxies.

    ``qualified`` is set by :func:`unique_ids` when two specs share an attribute
    name, so that their test ids stay distinct.
    """

    spec: str
    module: str
    attr: str
    factory: Callable[[], object] = field(compare=False)
    fd_passing: bool
    qualified: bool = field(default=False, compare=False)
    #: The implementation's language ("python", or what an exec: program's hello says)
    #: and, for an exec: program, the adapter protocol version it speaks.
    language: str = field(default="python", compare=False)
    protocol: int | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        """Short pytest param id: the attribute, or the full spec when ambiguous."""
        return self.spec if self.qualified else self.attr


def load_impl(spec: str) -> ImplSpec:
    """Import, call once and check the factory named by ``spec``.

    The call happens in a forked child inside the isolation the servers use
    (``isolation.call_isolated``): validation must leave no fd or IPC object on
    the host, even for an implementation that breaks IPC-01 in its constructor.
    """
    if spec.startswith(EXEC_PREFIX):
        return _load_exec(spec)
    module_name, attr = _split(spec)
    module = _import(spec, module_name)
    factory = _resolve(spec, module, attr)
    fd_passing = _probe_isolated(spec, attr, factory)
    return ImplSpec(spec, module_name, attr, factory, fd_passing)


def _probe_isolated(spec: str, attr: str, factory: Callable[[], object]) -> bool:
    """Whether ``factory()``'s object is fd-passing; ImplError for any contract problem."""
    from .harness.isolation import call_isolated

    try:
        result = call_isolated(lambda: json.dumps(_probe(spec, attr, factory)).encode())
    except TimeoutError:
        raise ImplError(
            f"--fdpass-impl={spec}: calling {attr}() and close() did not finish within 30s "
            "(does the constructor block?)"
        ) from None
    if result.status != 0:
        text = result.output.decode(errors="replace").strip() or f"exit status {result.status}"
        raise ImplError(f"--fdpass-impl={spec}: probing {attr}() failed: {text}")
    verdict = json.loads(result.output)
    if verdict["problem"]:
        raise ImplError(verdict["problem"])
    return bool(verdict["fd_passing"])


def _probe(spec: str, attr: str, factory: Callable[[], object]) -> dict[str, object]:
    """In the isolated child: construct, check the shape, close; the first problem as text."""
    try:
        probe = _call(spec, attr, factory)
    except ImplError as exc:
        return {"problem": str(exc), "fd_passing": False}
    try:
        problems = check_impl(probe)
        fd_passing = is_fd_passing(probe)
    except Exception as exc:  # a property that raises while being looked up
        problems = [f"looking up its methods raised {type(exc).__name__}: {_first_line(exc)}"]
        fd_passing = False
    close_problem = _close_probe(attr, probe)
    problem = ""
    if problems:
        problem = (
            f"--fdpass-impl={spec}: {attr}() returned a {type(probe).__name__} that "
            f"breaks the contract: {'; '.join(problems)}"
        )
    elif close_problem:
        problem = f"--fdpass-impl={spec}: {close_problem}"
    return {"problem": problem, "fd_passing": fd_passing}


def unique_ids(impls: Iterable[ImplSpec]) -> list[ImplSpec]:
    """Qualify the ids of specs whose short ids collide (``a:Proxy`` and ``b:Proxy``)."""
    items = list(impls)
    seen: dict[str, int] = {}
    for impl in items:
        seen[impl.attr] = seen.get(impl.attr, 0) + 1
    return [replace(impl, qualified=seen[impl.attr] > 1) for impl in items]


def _load_exec(spec: str) -> ImplSpec:
    """``exec:COMMAND ARGS...``: start the program once for its hello (docs/adapter.md)."""
    from .adapter import ProgramError, exec_impl

    try:
        argv = shlex.split(spec[len(EXEC_PREFIX) :])
    except ValueError as exc:
        raise ImplError(f"--fdpass-impl={spec}: cannot split the command: {exc}") from None
    if not argv:
        raise ImplError(f"--fdpass-impl={spec}: no command after 'exec:'; {EXEC_FORM}")
    try:
        factory = exec_impl(argv)
    except ProgramError as exc:
        raise ImplError(f"--fdpass-impl={spec}: {exc}") from None
    return ImplSpec(
        spec,
        "exec",
        factory.name,
        factory,
        factory.hello.fd_passing,
        language=factory.language,
        protocol=factory.protocol,
    )


def _split(spec: str) -> tuple[str, str]:
    module_name, colon, attr = spec.partition(":")
    if not colon:
        raise ImplError(f"--fdpass-impl={spec}: no ':' in the value; {EXPECTED_FORM}")
    for part, what in ((module_name, "module"), (attr, "attribute")):
        if not part.strip():
            raise ImplError(f"--fdpass-impl={spec}: empty {what} name; {EXPECTED_FORM}")
        if not all(name.isidentifier() for name in part.split(".")):
            raise ImplError(
                f"--fdpass-impl={spec}: {what} name {part!r} is not a dotted Python name; "
                f"{EXPECTED_FORM}"
            )
    return module_name, attr


def _import(spec: str, module_name: str) -> ModuleType:
    try:
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            top, dot, rest = module_name.partition(".")
            if exc.name != top or top not in ALIASES:
                raise
            return importlib.import_module(ALIASES[top] + dot + rest)
    except ImportError as exc:
        hint = _not_on_path_hint(module_name, exc)
        raise ImplError(
            f"--fdpass-impl={spec}: cannot import module {module_name!r}: "
            f"{type(exc).__name__}: {_first_line(exc)}{hint}"
        ) from None
    except Exception as exc:
        raise ImplError(
            f"--fdpass-impl={spec}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None


def _not_on_path_hint(module_name: str, exc: ImportError) -> str:
    """The usual cause of a surprise: the module sits in the cwd, which the
    ``pytest`` script (unlike ``python -m pytest``) does not put on sys.path."""
    top = module_name.split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or exc.name != top:
        return ""
    cwd = Path.cwd()
    if (cwd / f"{top}.py").is_file() or (cwd / top).is_dir():
        return " (it is in the current directory: run `python -m pytest` or set PYTHONPATH=.)"
    return ""


def _resolve(spec: str, module: ModuleType, attr: str) -> Callable[[], object]:
    obj: object = module
    owner = module.__name__
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ImplError(
                f"--fdpass-impl={spec}: {owner!r} has no attribute {name!r}{_near_names(name, obj)}"
            ) from None
        owner = f"{owner}.{name}"
    if not callable(obj):
        raise ImplError(
            f"--fdpass-impl={spec}: {attr} is not callable (it is of type {type(obj).__name__}); "
            "it must be a class or a zero-argument factory"
        )
    return obj


def _near_names(name: str, obj: object) -> str:
    candidates = [n for n in dir(obj) if not n.startswith("__")]
    near = difflib.get_close_matches(name, candidates, n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def _call(spec: str, attr: str, factory: Callable[[], object]) -> object:
    try:
        return factory()
    except Exception as exc:
        raise ImplError(
            f"--fdpass-impl={spec}: calling {attr}() raised "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None


def _close_probe(attr: str, probe: object) -> str | None:
    """Close the probe; the problem as text, so a contract problem can take precedence."""
    try:
        close = getattr(probe, "close", None)
        if callable(close):
            close()
    except Exception as exc:
        return f"close() of a fresh {attr}() raised {type(exc).__name__}: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
