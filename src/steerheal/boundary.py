"""Type checks at steerheal's boundaries: the public API's arguments and the metadata files it reads.

`@checked` makes a public function or method check each annotated argument against its annotation on every
call, with or without BEARTYPE=1, and raise a `SteerhealError` that names the function, the argument (down
to the offending item: `pos[3]`), what it got and what it expects. It is stricter than beartype where
beartype is lenient on purpose: every item of a list is checked (beartype samples one), a `str` is refused
where a sequence is expected (it would be read one character per item), and a bool is refused where a
number is expected. An int passes for a float (PEP 484's numeric tower, as `typecheck.py` does).

jaxtyping annotations are checked for their array type and, without BEARTYPE=1, their dtype and rank; with
BEARTYPE=1 the import hook's `jaxtyped` checks shapes right after, so they are not checked twice.

`check_meta` checks a JSON object read from a file against a schema ({key: annotation}), naming the file.
Checks are compiled once per annotation (on a function's first call), so a call costs a signature bind and a
few isinstance tests.
"""

from __future__ import annotations

import collections.abc as abc
import functools
import inspect
import os
import reprlib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, no_type_check

from jaxtyping import AbstractArray

from steerheal.errors import SteerhealError

Check = Callable[[Any, str], "str | None"]  # (value, where) -> None, or what is wrong with it
SHAPES_CHECKED_BY_HOOK = os.environ.get("BEARTYPE") == "1"
_SEQUENCES = {list: list, abc.Sequence: abc.Sequence, abc.MutableSequence: abc.MutableSequence}
_SETS = {set: set, frozenset: frozenset, abc.Set: abc.Set}
_MAPPINGS = {dict: dict, abc.Mapping: abc.Mapping, abc.MutableMapping: abc.MutableMapping}
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist = 40, 40, 4


def show(value: Any) -> str:
    """`type value`, short: `str 'happy'`, `NoneType`, `Tensor of shape (3, 4) float32`."""
    if value is None:
        return "None"
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(shape)} {str(value.dtype).removeprefix('torch.')}"
    return f"{type(value).__name__} {_short.repr(value)}"


def describe(hint: Any) -> str:
    """An annotation as a reader writes it: `Sequence[str | tuple[str, str]] | None`."""
    if hint is None or hint is type(None):
        return "None"
    if isinstance(hint, type) and issubclass(hint, AbstractArray):
        return hint.__name__
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else describe(a) for a in args)}]" if args else name
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


@no_type_check
def _plain(cls: type) -> Check:
    if cls is float:
        accepted: tuple[type, ...] = (int, float)
    elif cls is complex:
        accepted = (int, float, complex)
    else:
        accepted = (cls,)
    strict_number = cls in (int, float, complex)

    def check(value: Any, where: str) -> str | None:
        if isinstance(value, accepted) and not (strict_number and isinstance(value, bool)):
            return None
        return f"{where} is {show(value)}"

    return check


@no_type_check
def _array(hint: type) -> Check:
    array_type = hint.array_type

    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, array_type):
            return f"{where} is {show(value)}"
        if not SHAPES_CHECKED_BY_HOOK and not isinstance(value, hint):
            return f"{where} is {show(value)}, not of dtype and rank {hint.__name__}"
        return None

    return check


@no_type_check
def _items(container: tuple[type, ...], item: Check, what: str) -> Check:
    def check(value: Any, where: str) -> str | None:
        if isinstance(value, str | bytes):
            return f"{where} is a single {show(value)}, which would be read as {what} of its characters"
        if not isinstance(value, container):
            return f"{where} is {show(value)}"
        for i, x in enumerate(value):
            wrong = item(x, f"{where}[{i}]")
            if wrong:
                return wrong
        return None

    return check


@no_type_check
def _compile(hint: Any) -> Check:
    """The check of one annotation (compiled once, run on every call)."""
    if hint is Any or hint is object or isinstance(hint, typing.TypeVar):
        return lambda value, where: None
    if hint is None or hint is type(None):
        return lambda value, where: None if value is None else f"{where} is {show(value)}"
    if isinstance(hint, type) and issubclass(hint, AbstractArray):
        return _array(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_compile(a) for a in args]

        def union(value: Any, where: str) -> str | None:
            wrongs = []
            for option in options:
                wrong = option(value, where)
                if wrong is None:
                    return None
                wrongs.append(wrong)
            return max(wrongs, key=lambda w: len(w.split(" is ", 1)[0]))  # the deepest: an item, not the whole

        return union
    if origin is typing.Literal:
        return lambda value, where: None if value in args else f"{where} is {show(value)}"
    if origin is typing.Annotated:
        return _compile(args[0])
    if origin in _SEQUENCES or origin in _SETS or origin in (abc.Iterable, abc.Collection):
        item = _compile(args[0]) if args else _compile(Any)
        return _items((origin,), item, "a sequence" if origin not in _SETS else "a set")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _items((tuple,), _compile(args[0]), "a tuple")
        parts = [_compile(a) for a in args]

        def fixed(value: Any, where: str) -> str | None:
            if not isinstance(value, tuple) or len(value) != len(parts):
                return f"{where} is {show(value)}"
            for i, (part, x) in enumerate(zip(parts, value, strict=True)):
                wrong = part(x, f"{where}[{i}]")
                if wrong:
                    return wrong
            return None

        return fixed
    if origin in _MAPPINGS:
        key, val = (_compile(args[0]), _compile(args[1])) if args else (_compile(Any), _compile(Any))

        def mapping(value: Any, where: str) -> str | None:
            if not isinstance(value, abc.Mapping):
                return f"{where} is {show(value)}"
            for k, v in value.items():
                wrong = key(k, f"a key of {where}") or val(v, f"{where}[{k!r}]")
                if wrong:
                    return wrong
            return None

        return mapping
    if origin is abc.Callable or hint is abc.Callable:
        return lambda value, where: None if callable(value) else f"{where} is {show(value)}"
    if origin is type:
        return lambda value, where: None if isinstance(value, type) else f"{where} is {show(value)}"
    if origin is not None:  # another generic (Iterator[...], a protocol): its runtime class
        return _plain(origin) if isinstance(origin, type) else _compile(Any)
    if isinstance(hint, type):
        return _plain(hint)
    return _compile(Any)  # an annotation this module does not know: beartype (BEARTYPE=1) still sees it


@no_type_check
def fix_for(hint: Any, value: Any) -> str:
    """The fix to suggest for `value` given where `hint` is expected: a lone item of a sequence is wrapped."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    options = args if origin in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        inner = typing.get_args(option)
        sequence = typing.get_origin(option) in (*_SEQUENCES, abc.Iterable, abc.Collection)
        if sequence and inner and _compile(inner[0])(value, "") is None:
            return f"wrap it in a list: [{_short.repr(value)}]"
    return f"pass {describe(hint)}"


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Each parameter's annotation, resolved in the module that defines it; annotations that do not
    resolve at run time (names imported under TYPE_CHECKING) are left unchecked."""
    original = inspect.unwrap(fn)
    namespace = getattr(original, "__globals__", {})
    out = {}
    for name, param in inspect.signature(original).parameters.items():
        annotation = param.annotation
        if annotation is inspect.Parameter.empty:
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)
            except NameError:
                continue
        out[name] = annotation
    return out


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check every annotated argument of `fn` on each call (see the module docstring)."""
    signature = inspect.signature(inspect.unwrap(fn))
    qualname = f"{fn.__qualname__}()"
    compiled: dict[str, tuple[Any, Check]] = {}

    @no_type_check
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not compiled:
            compiled.update({name: (hint, _compile(hint)) for name, hint in _hints(fn).items()})
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            names = ", ".join(p for p in signature.parameters if p not in ("self", "cls"))
            raise SteerhealError(f"{qualname}: {err}; its arguments are ({names})") from None
        for name, value in bound.arguments.items():
            entry = compiled.get(name)
            if entry is None:
                continue
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                for key, item in value.items():
                    _raise_if_wrong(qualname, entry, item, key, key)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                for i, item in enumerate(value):
                    _raise_if_wrong(qualname, entry, item, f"{name}[{i}]", name)
            else:
                _raise_if_wrong(qualname, entry, value, name, name)
        return fn(*args, **kwargs)

    wrapper.__steerheal_checked__ = True  # type: ignore[attr-defined]
    return wrapper


@no_type_check
def _raise_if_wrong(qualname: str, entry: tuple[Any, Check], value: Any, where: str, name: str) -> None:
    hint, check = entry
    wrong = check(value, where)
    if wrong:
        raise SteerhealError(
            f"{qualname}: argument {name!r} must be {describe(hint)}, but {wrong}; {fix_for(hint, value)}"
        )


def check_meta(meta: dict[str, Any], schema: dict[str, Any], file: Path, what: str, saver: str) -> None:
    """Every key of `schema` present in `meta` (a JSON object read from `file`) with a value of its type;
    keys whose annotation admits None may be absent (files written before the key existed)."""
    for key, hint in schema.items():
        optional = _compile(hint)(None, key) is None
        if key not in meta:
            if optional:
                continue
            raise SteerhealError(
                f"{what}: {file.name} lacks {key!r} ({describe(hint)}); the file is damaged or was edited by hand: "
                f"restore it or save again with {saver}"
            )
        wrong = _compile(hint)(meta[key], key)
        if wrong:
            raise SteerhealError(
                f"{what}: in {file.name}, {key!r} must be {describe(hint)}, but {wrong}; the file is damaged or "
                f"was edited by hand: restore it or save again with {saver}"
            )


def check_choice(value: str, choices: tuple[str, ...] | list[str], key: str, file: Path, what: str) -> None:
    """A metadata string that must be one of `choices`."""
    if value not in choices:
        raise SteerhealError(
            f"{what}: in {file.name}, {key}={value!r} is not one of {list(choices)}; the file is damaged or was "
            "edited by hand: restore it or save again"
        )


def safetensors_header(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header (read after the file itself was read and checked)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        return handle.metadata() or {}


def check_methods(cls: type, *, init: bool = False) -> type:
    """`@checked` on every public method of `cls` (plain, class and static methods; `__call__`, `__getitem__`),
    and on `__init__` when `init` (a dataclass's generated constructor, which a decorator in the class body
    cannot reach). Properties are attributes, not calls: they are left alone."""
    for name, member in list(vars(cls).items()):
        public = not name.startswith("_") or name in ("__call__", "__getitem__") or (init and name == "__init__")
        if not public or getattr(member, "__steerheal_checked__", False):
            continue
        if isinstance(member, classmethod):
            setattr(cls, name, classmethod(checked(member.__func__)))
        elif isinstance(member, staticmethod):
            setattr(cls, name, staticmethod(checked(member.__func__)))
        elif inspect.isfunction(member):
            setattr(cls, name, checked(member))
    return cls
