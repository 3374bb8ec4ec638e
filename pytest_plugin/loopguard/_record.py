"""Value classes without generated code: equality and repr (and, for frozen ones, a hash and
no assignment) from the fields a class lists, in order, in ``_fields`` (also its
``__slots__``).

The plugin's settings, state and judge are imported at every pytest start-up; a dataclass
compiles its ``__init__``, ``__eq__`` and ``__repr__`` from source each time its module is
imported, where these classes write their ``__init__`` by hand and Python loads them from
its bytecode cache. They compare, print and hash as the same dataclass would (fields in
order); :meth:`Record.replace` stands for ``dataclasses.replace``, which, like
``dataclasses.fields``, does not apply to them.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from typing_extensions import Self


class Record:
    """A mutable value: equal to an instance of the same class with equal fields (and, like a
    dataclass, unhashable)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (field names to values), like ``dataclasses.replace``."""
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return self.__class__(**values)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{self.__class__.__qualname__}({fields})"


class FrozenRecord(Record):
    """An immutable value: hashable; assigning or deleting a field raises
    :class:`dataclasses.FrozenInstanceError`. ``__init__`` sets fields with ``_set``."""

    __slots__ = ()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._values())

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Copied and pickled through ``__init__`` (fields in order), not by assignment.
        return self.__class__, self._values()
