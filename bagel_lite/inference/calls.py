"""The Python line that makes an output again. Every result shows one (``Generated.call``, ``Reply.call``,
``Answer.call``), written here and only here."""

from __future__ import annotations


class Variable(str):
    """A variable's name inside a shown call (``image``, ``init_noise``): its repr is the bare name."""

    def __repr__(self):
        return str(self)


def call_line(target: str, method: str, *args, **kwargs) -> str:
    """``target.method(arg, ..., key=value, ...)``, each value shown by its repr (a ``Variable`` by its name)."""
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{target}.{method}(" + ", ".join(shown) + ")"
