"""Parity checks for tests and for the test cells of graded notebooks.

Assignment test cells compare a student's function to aelab's reference in a way that
monkeypatching ``aelab`` cannot fool:

* ``reference(qualname)`` executes the reference's source file from disk into a private module
  object (and the aelab modules it imports, the same way), so a student who rebinds
  ``aelab.functional.kl_normal`` changes nothing the test compares against;
* ``forbid_reference(*qualnames)`` makes aelab's own functions raise while the student's code runs,
  so a "solution" that only calls aelab's function earns no points;
* ``check_close`` names the function, the error and the likely mistake when values differ;
* ``substitute`` swaps names in the notebook's namespace for one check, so that a composite (a
  model's loss) can be graded independently of the parts it is built from.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import math
import sys
import types
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_close", "forbid_reference", "reference", "substitute"]

PACKAGE_DIR = Path(__file__).resolve().parent
"""The folder of the installed aelab package; references are read from the files in it."""


class _FreshImporter:
    """Execute aelab modules from their files into private module objects, never registered in sys.modules.

    Every ``import aelab...`` / ``from aelab... import ...`` executed by such a module (at import
    time or later, inside a function) is resolved by the same importer, so the whole chain of aelab
    code behind a reference is fresh; every other import goes to Python's import system as usual.
    """

    def __init__(self) -> None:
        self.modules: dict[str, types.ModuleType] = {}
        self.builtins = {**vars(builtins), "__import__": self._import}

    def module(self, name: str) -> types.ModuleType:
        """The fresh module ``name`` (``aelab`` or ``aelab.x.y``), loading its parents first."""
        if name in self.modules:
            return self.modules[name]
        parts = name.split(".")
        if parts[0] != "aelab":
            raise ModuleNotFoundError(f"{name!r} is not part of aelab")
        parent = self.module(".".join(parts[:-1])) if len(parts) > 1 else None
        if name in self.modules:  # loading the parent package imported this module already
            return self.modules[name]
        base = PACKAGE_DIR.joinpath(*parts[1:])
        if (base / "__init__.py").is_file():
            spec = importlib.util.spec_from_file_location(name, base / "__init__.py", submodule_search_locations=[str(base)])
        elif base.with_suffix(".py").is_file():
            spec = importlib.util.spec_from_file_location(name, base.with_suffix(".py"))
        else:
            raise ModuleNotFoundError(f"no module named {name!r} in {PACKAGE_DIR}", name=name)
        assert spec is not None and spec.loader is not None
        # dataclasses look their class's module up in sys.modules by name: make sure the regular
        # import of the same module exists (it is only read for annotations, never for values).
        importlib.import_module(name)
        module = importlib.util.module_from_spec(spec)
        module.__dict__["__builtins__"] = self.builtins
        self.modules[name] = module  # before executing it, as Python does, so import cycles resolve
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del self.modules[name]
            raise
        if parent is not None:
            setattr(parent, parts[-1], module)
        return module

    def _import(self, name: str, module_globals: Mapping[str, Any] | None = None, module_locals: Any = None,
                fromlist: tuple[str, ...] | list[str] | None = (), level: int = 0) -> types.ModuleType:
        """``__import__`` for fresh modules: aelab names are loaded by this importer, others by Python."""
        if level > 0:
            package = (module_globals or {}).get("__package__") or ""
            base = package.rsplit(".", level - 1)[0] if level > 1 else package
            name = f"{base}.{name}" if name else base
        if name != "aelab" and not name.startswith("aelab."):
            return builtins.__import__(name, module_globals, module_locals, fromlist or (), 0)
        module = self.module(name)
        if not fromlist:
            return self.modules[name.split(".")[0]]
        for item in fromlist:
            if item != "*" and not hasattr(module, item):
                try:
                    self.module(f"{name}.{item}")
                except ModuleNotFoundError:
                    pass  # a missing attribute: the from-import itself raises the usual ImportError
        return module


def reference(qualname: str) -> Any:
    """A fresh, untouched copy of an aelab object, read from its source file: ``reference("aelab.functional.kl_normal")``.

    ``qualname`` is a module path inside aelab followed by an attribute path
    (``"aelab.functional.distributions.kl_normal"``, ``"aelab.vae.vae.VAE.loss"``). The module is
    executed from disk into a new module object that is never registered in ``sys.modules``; the
    aelab modules it imports are loaded the same way, so no patch applied to the imported ``aelab``
    (``aelab.functional.kl_normal = ...``) reaches the returned object. Third-party imports (torch)
    are shared as usual. Each call loads afresh.
    """
    parts = qualname.split(".")
    if parts[0] != "aelab" or len(parts) < 2:
        raise ValueError(f"reference() takes the dotted name of an aelab object, got {qualname!r}")
    importer = _FreshImporter()
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importer.module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        for attr in parts[split:]:
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise AttributeError(f"{module_name} has no attribute path {'.'.join(parts[split:])!r} (asked for {qualname!r})") from None
        return obj
    raise ModuleNotFoundError(f"no aelab module found for {qualname!r}")


def _is_installed_aelab_function(obj: Any, module_name: str, name: str) -> bool:
    """Whether ``obj`` is the function ``name`` defined by the imported (sys.modules) ``module_name``.

    Fresh copies from ``reference`` and the student's own functions of the same name are not.
    """
    module = sys.modules.get(module_name)
    return (
        isinstance(obj, types.FunctionType)
        and module is not None
        and obj.__module__ == module_name
        and obj.__name__ == name
        and obj.__globals__ is vars(module)
    )


def _forbidden(qualname: str) -> Callable[..., Any]:
    """A stand-in for ``qualname`` that fails the test with a message saying why."""
    short = qualname.rsplit(".", 1)[1]

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(
            f"{qualname} was called while your code was being tested: implement it yourself instead of "
            f"calling aelab's {short} (torch operations are fine)"
        )

    forbidden.__qualname__ = forbidden.__name__ = f"forbidden_{short}"
    return forbidden


@contextmanager
def forbid_reference(*qualnames: str) -> Iterator[None]:
    """Within the block, aelab's functions ``qualnames`` raise AssertionError instead of computing.

    Each ``"aelab.module.function"`` is replaced in its defining module and in ``aelab.functional``
    (whatever those attributes currently hold), and wherever else the genuine function is bound
    under its name: in every imported aelab module (``aelab.vae.vae`` imports ``kl_normal``) and in
    ``__main__`` (the notebook's namespace, for ``from aelab.functional import kl_normal``).
    Everything is restored on exit. Fresh copies from ``reference`` are not affected.
    """
    saved: list[tuple[Any, str, Any]] = []

    def replace(owner: Any, attr: str, value: Any) -> None:
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    try:
        for qualname in qualnames:
            module_name, _, name = qualname.rpartition(".")
            if not module_name.startswith("aelab"):
                raise ValueError(f"forbid_reference() takes dotted names of aelab functions, got {qualname!r}")
            module = importlib.import_module(module_name)
            stub = _forbidden(qualname)
            replace(module, name, stub)
            functional = importlib.import_module("aelab.functional")
            if functional is not module and hasattr(functional, name):
                replace(functional, name, stub)
            holders = [m for key, m in list(sys.modules.items()) if key == "aelab" or key.startswith("aelab.")]
            main = sys.modules.get("__main__")
            if main is not None:
                holders.append(main)
            for holder in holders:
                for key, value in list(vars(holder).items()):
                    if _is_installed_aelab_function(value, module_name, name):
                        replace(holder, key, stub)
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


@contextmanager
def substitute(namespace: MutableMapping[str, Any], **replacements: Any) -> Iterator[None]:
    """Within the block, bind ``namespace[name] = value`` for each keyword; restore (or remove) on exit.

    Used as ``with substitute(globals(), kl_normal=reference(...)):`` to grade a composite (a model's
    ``loss``) with the reference parts in place of the student's, so one mistake costs points once.
    """
    missing = object()
    saved = {name: namespace.get(name, missing) for name in replacements}
    namespace.update(replacements)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                namespace.pop(name, None)
            else:
                namespace[name] = value


def _describe_shape_mistake(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    """A guess at why a result has the wrong shape (per-example reductions are the usual suspect)."""
    if len(want) == 1 and len(got) == 0:
        return "you returned one number for the whole batch: keep one value per example (do not sum or average over the batch)"
    if len(want) == 1 and len(got) > 1 and got[0] == want[0]:
        return "sum over every dimension except the batch dimension to get one value per example"
    if len(got) == len(want) + 1 and got[1:] == want:
        return "a reduction over the batch dimension was done instead of over the other dimensions"
    return "check which dimensions you reduce over"


def check_close(
    student: Any,
    expected: Tensor | float | list,
    name: str,
    hint: str = "",
    *,
    mistakes: Mapping[str, Tensor] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    check_dtype: bool = True,
) -> None:
    """Assert that the student's result equals ``expected``; the AssertionError names what is wrong.

    The checks, in order: the result is a tensor; it has the expected shape (with a guess at the
    wrong reduction); the expected dtype (``check_dtype``); finite where the expected value is;
    close within ``atol + rtol * |expected|``. On a value mismatch the message gives the max abs
    error and, when the result matches one of ``mistakes`` (description -> the value that mistake
    produces, e.g. ``{"the KL has the wrong sign": -kl}``), that description, else ``hint``.
    """
    expected = torch.as_tensor(expected)
    if not isinstance(student, Tensor):
        raise AssertionError(f"{name} returned {type(student).__name__}, expected a torch.Tensor of shape {tuple(expected.shape)}")
    got_shape, want_shape = tuple(student.shape), tuple(expected.shape)
    if got_shape != want_shape:
        raise AssertionError(
            f"{name} returned shape {got_shape}, expected {want_shape}: {_describe_shape_mistake(got_shape, want_shape)}"
            + (f". Hint: {hint}" if hint else "")
        )
    if check_dtype and student.dtype != expected.dtype:
        raise AssertionError(
            f"{name} returned dtype {student.dtype}, expected {expected.dtype}: compute in the dtype of the inputs "
            "(create constants with torch.zeros_like / torch.ones_like or Python floats, not torch.tensor(...) of another dtype)"
        )
    got = student.detach().to("cpu", torch.float64)
    want = expected.detach().to("cpu", torch.float64)
    bad_finite = torch.isfinite(want) & ~torch.isfinite(got)
    if bad_finite.any():
        raise AssertionError(
            f"{name} returned {int(bad_finite.sum())} non-finite value(s) (nan or inf) where the reference is finite"
            + (f". Hint: {hint}" if hint else "")
        )
    if torch.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        return
    finite = torch.isfinite(want)
    err = (got - want).abs()[finite].max().item() if finite.any() else math.nan
    message = f"{name} differs from the reference: max abs error {err:.4g} (tolerance {atol:g} + {rtol:g} * |expected|)"
    for description, value in (mistakes or {}).items():
        value = torch.as_tensor(value).detach().to("cpu", torch.float64)
        if value.shape == got.shape and torch.allclose(got, value, rtol=rtol, atol=atol, equal_nan=True):
            raise AssertionError(f"{message}. Your result is exactly what you get if {description}")
    raise AssertionError(message + (f". Hint: {hint}" if hint else ""))
