"""A small metrics registry: counters and gauges with labels, rendered in the
Prometheus text exposition format 0.0.4 (what ``GET /metrics`` serves).

One process, one registry (``REGISTRY``); components get or create their
metric families by name, so starting a component twice reuses its families.
"""

from __future__ import annotations

import math
import re
from typing import TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class MetricError(ValueError):
    """A metric used with the wrong name, type or labels."""


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Family:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        if not _NAME.match(name):
            raise MetricError(f"bad metric name {name!r}")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__"):
                raise MetricError(f"bad label name {label!r} for {name}")
        self.name = name
        self.help = help
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labels):
            raise MetricError(f"{self.name} has labels {sorted(self.labels)}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labels)

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key, value in sorted(self._values.items()):
            pairs = ",".join(
                f'{n}="{_escape_label(v)}"' for n, v in zip(self.labels, key, strict=True)
            )
            lines.append(f"{self.name}{{{pairs}}} {_format_value(value)}" if pairs
                         else f"{self.name} {_format_value(value)}")  # fmt: skip
        return lines


class Counter(_Family):
    """Only goes up (until the process restarts)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise MetricError(f"{self.name}: a counter cannot go down ({amount})")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Family):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


F = TypeVar("F", bound=_Family)


class Registry:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        return self._get(Counter, name, help, labels)

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Gauge:
        return self._get(Gauge, name, help, labels)

    def _get(self, cls: type[F], name: str, help: str, labels: tuple[str, ...]) -> F:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = cls(name, help, labels)
        if not isinstance(family, cls) or family.labels != labels:
            raise MetricError(
                f"{name} is already registered as a {family.kind} with {family.labels}"
            )
        return family

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._families):
            lines += self._families[name].render()
        return "\n".join(lines) + "\n" if lines else ""


REGISTRY = Registry()  # the process's registry
