"""Settings dataclasses: one declaration feeds defaults, bounds, help text, YAML, CLI flags and node widgets.

Every job (train, caption, fetch, publish) declares a dataclass whose fields are made with :func:`setting`.
`from_dict` rejects unknown keys (naming the nearest valid one), wrong types and out-of-bound values, so a
typo in a YAML file or a node widget never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, ClassVar, Self

_MISSING = dataclasses.MISSING


def setting(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: typing.Sequence[str] | None = None,
    step: float | None = None,
    multiline: bool = False,
    advanced: bool = False,
    widget: bool = True,
    optional: bool = False,
) -> Any:
    """Declare one setting. `choices` may name a registry's keys; `widget=False` keeps it out of node widgets;
    `optional=True` makes it an optional node input (settings added later, so saved workflows stay valid)."""
    meta = {
        "help": help,
        "min": min,
        "max": max,
        "choices": tuple(choices) if choices is not None else None,
        "step": step,
        "multiline": multiline,
        "advanced": advanced,
        "widget": widget,
        "optional": optional,
    }
    if isinstance(default, list | dict | set):
        factory = type(default)(default)
        return dataclasses.field(default_factory=lambda: type(factory)(factory), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class SettingsError(ValueError):
    """A setting has an unknown name, a wrong type or a value out of bounds; the message says which."""


def _base_type(annotation: Any) -> tuple[type, bool]:
    """Return (type, optional) for annotations like `int`, `float | None`, `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner, _ = _base_type(args[0])
        return inner, True
    if origin is not None:
        return origin, False
    return annotation, False


@dataclasses.dataclass
class Settings:
    """Base class for settings dataclasses. Subclasses are plain `@dataclass`es whose fields use `setting`."""

    ALIASES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, self._coerce(f, getattr(self, f.name)))

    # ---- introspection -------------------------------------------------------------------------------
    @classmethod
    def field_specs(cls) -> list[dataclasses.Field]:
        """The dataclass fields, in declaration order."""
        return list(dataclasses.fields(cls))

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def _coerce(cls, f: dataclasses.Field, value: Any) -> Any:
        meta = f.metadata
        typ, optional = _base_type(cls._hints()[f.name])
        if value is None:
            if optional:
                return None
            raise SettingsError(f"{f.name} must be set (a {typ.__name__}), got None")
        try:
            if typ is bool:
                if isinstance(value, str):
                    lowered = value.strip().lower()
                    if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                        raise ValueError(value)
                    value = lowered in ("true", "1", "yes", "on")
                elif not isinstance(value, bool | int):
                    raise ValueError(value)
                value = bool(value)
            elif typ is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                value = int(value)
            elif typ is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
            elif typ is str:
                if not isinstance(value, str | int | float):
                    raise ValueError(value)
                value = str(value)
            elif typ is list:
                if isinstance(value, str):
                    value = [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]
                value = list(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{f.name} must be a {typ.__name__}, got {value!r}") from None
        if typ in (int, float):
            if value != value:  # NaN
                raise SettingsError(f"{f.name} must be a number, got NaN")
            lo, hi = meta.get("min"), meta.get("max")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise SettingsError(f"{f.name} must be between {lo} and {hi}, got {value}")
        choices = meta.get("choices")
        if choices and typ is str and value not in choices:
            hint = difflib.get_close_matches(str(value), choices, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SettingsError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}{extra}")
        return value

    # ---- construction --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], *, extra_keys: typing.Iterable[str] = ()) -> Self:
        """Build from a mapping (YAML, widgets, metadata). Unknown keys raise, naming the nearest valid key."""
        names = [f.name for f in dataclasses.fields(cls)]
        allowed = set(names) | set(extra_keys)
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = cls.ALIASES.get(key, key)
            if name not in allowed:
                candidates = names + list(cls.ALIASES)
                hint = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise SettingsError(f"unknown setting {key!r} for {cls.__name__}{extra}")
            if name in kwargs:
                raise SettingsError(f"setting {name!r} given twice (once as alias {key!r})")
            if name in names:
                kwargs[name] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Self:
        """A copy with some settings changed, validated like `from_dict`."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """All settings as plain JSON-able values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_widgets(self) -> dict[str, Any]:
        """The widget settings as a node's API-format inputs (lists as comma-separated text)."""
        widgets = self.comfy_inputs()
        return {k: ", ".join(v) if isinstance(v, list) else v for k, v in self.to_dict().items() if k in widgets}

    # ---- front ends ----------------------------------------------------------------------------------
    @classmethod
    def comfy_inputs(cls, *, skip: typing.Iterable[str] = (), optional: bool = False) -> dict[str, tuple]:
        """ComfyUI V1 `INPUT_TYPES` entries for every widget setting, with tooltips from the help text: the required
        ones, or with `optional=True` those declared optional."""
        skipped = set(skip)
        inputs: dict[str, tuple] = {}
        hints = cls._hints()
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta.get("widget", True) or f.name in skipped or meta.get("optional", False) != optional:
                continue
            typ, _ = _base_type(hints[f.name])
            default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
            opts: dict[str, Any] = {"tooltip": meta["help"]}
            if meta.get("advanced"):
                opts["advanced"] = True
            if meta.get("choices"):
                inputs[f.name] = (list(meta["choices"]), {**opts, "default": default})
                continue
            if typ is bool:
                inputs[f.name] = ("BOOLEAN", {**opts, "default": default})
            elif typ in (int, float):
                for key in ("min", "max", "step"):
                    if meta.get(key) is not None:
                        opts[key] = meta[key]
                if typ is float:
                    # Small values (learning rates) need fine steps; the frontend rounds to `round` (False is
                    # ignored by frontend 1.32, so a tiny positive value keeps what the user typed).
                    opts.setdefault("step", 1e-6 if (default or 1) < 0.01 else 0.01)
                    opts["round"] = 1e-10
                inputs[f.name] = ("INT" if typ is int else "FLOAT", {**opts, "default": default})
            else:
                text = ", ".join(default) if isinstance(default, list) else (default or "")
                inputs[f.name] = ("STRING", {**opts, "default": text, "multiline": meta.get("multiline", False)})
        return inputs

    @classmethod
    def describe(cls) -> str:
        """Every setting with its default, bounds and help, for `--help` and `config --print-defaults`."""
        lines = []
        for f in dataclasses.fields(cls):
            meta = f.metadata
            default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
            bounds = ""
            if meta.get("choices"):
                bounds = f" [choices: {', '.join(meta['choices'])}]"
            elif meta.get("min") is not None or meta.get("max") is not None:
                bounds = f" [{meta.get('min')} .. {meta.get('max')}]"
            lines.append(f"{f.name}: {default!r}{bounds}\n    {meta['help']}")
        return "\n".join(lines)
