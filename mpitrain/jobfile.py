"""Load a TOML job file into a validated `JobConfig`.

Every error is one line naming the file, the key, what is wrong and how to fix it.
"""
from __future__ import annotations

import difflib
import math
import tomllib
import typing
from dataclasses import fields
from pathlib import Path

from .config import JobConfig, section_classes
from .errors import ConfigError
from .tasks import resolve_task

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list"}


def _shown(name: str) -> str:
    """A section or key name as it can appear in a one-line message (escapes if it
    holds line breaks or other unprintable characters)."""
    return name if name.isprintable() else repr(name)[1:-1]


def _closest(name: str, options) -> str:
    options = list(options)
    scores = {o: difflib.SequenceMatcher(None, name, o).ratio() for o in options}
    best = max(scores.values(), default=0.0)
    if best < 0.5:
        return f"valid keys: {', '.join(options)}"
    tied = [f"'{o}'" for o in options if scores[o] == best]
    return f"did you mean {' or '.join(tied)}?"


def _coerce(value, typ, where: str):
    """Check a TOML value against a field type (ints are accepted for floats)."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {value} is too large for a number; use a smaller value") from None
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where}: expected {_TYPE_NAMES.get(typ, typ.__name__)}, "
                          f"got {value!r}; fix the value's type")
    if typ is float and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}; give a number")
    return value


def _check_range(value, meta: dict, where: str) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, meta['choices']))}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where}: {value!r} is below the minimum {meta['min']}; use a value >= {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where}: {value!r} is above the maximum {meta['max']}; use a value <= {meta['max']}")


def _apply(cfg: JobConfig, section: str, key: str, value, where: str) -> None:
    classes = section_classes(cfg.task_sections and {k: type(v) for k, v in cfg.task_sections.items()})
    if section not in classes:
        raise ConfigError(f"{where}: unknown section [{_shown(section)}]; {_closest(section, classes)}")
    obj = cfg.section(section)
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    if key not in names:
        raise ConfigError(f"{where}: unknown key '{_shown(key)}' in [{section}]; {_closest(key, names)}")
    meta = next(f.metadata for f in fields(obj) if f.name == key)
    typ = hints[key]
    typ = typing.get_origin(typ) or typ  # list[int] -> list
    value = _coerce(value, typ, where)
    _check_range(value, meta, where)
    setattr(obj, key, value)


def parse_override(text: str):
    """'section.key=value' -> (section, key, value); the value is read as one TOML
    value, or taken as a plain string if it isn't one."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {_shown(text)}: expected SECTION.KEY=VALUE, e.g. --set grid.dp=2")
    path, raw = text.split("=", 1)
    section, key = path.split(".", 1)
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except (ValueError, RecursionError):  # TOMLDecodeError, or a number or nesting too big to read
        parsed = {}
    value = parsed["v"] if list(parsed) == ["v"] else raw  # "1\nw = 2" is text, not 1
    return section.strip(), key.strip(), value


def _read(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found; give the path of a TOML file, e.g. jobs/selfcheck.toml") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the job file ({e.strerror}); give the path of a readable "
                          "TOML file") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply; fix the syntax") from None
    except ValueError as e:  # TOMLDecodeError, or an integer too long to convert
        raise ConfigError(f"{path}: invalid TOML: {e}; fix the syntax") from None
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: top-level key '{_shown(section)}' must be a [section]; "
                              f"{_closest(section, section_classes())}")
    return data


def _entries(data: dict, path, overrides, sections: dict):
    """Every (section, key, value, where) to apply: file, then keyword sections, then
    --set overrides (the command line has the last word)."""
    for section, table in data.items():
        for key, value in table.items():
            yield section, key, value, f"{path}: [{_shown(section)}] {_shown(key)}"
    for section, table in sections.items():
        if not isinstance(table, dict):
            raise ConfigError(f"keyword argument {section}={table!r}: give a dict of keys, "
                              f"e.g. {section}={{...}}")
        for key, value in table.items():
            yield section, key, value, f"keyword argument {section}.{key}"
    for text in overrides:
        section, key, value = parse_override(text)
        yield section, key, value, f"--set {_shown(text)}"


def load_job(path: str | Path | None, overrides=(), *, task=None, sections: dict | None = None) -> JobConfig:
    """Read and validate a job file (None = all defaults), then apply keyword
    `sections` ({"grid": {"dp": 2}}), then `--set` overrides ("section.key=value").

    The job's task (`task` if given: a spec string or a task object, else
    `[job] task`) is resolved first, so that its own sections are validated too.
    Returns the config; the task object is `cfg.task`."""
    cfg = JobConfig()
    data = {}
    if path is not None:
        path = Path(path)
        cfg.source = str(path)
        cfg.base_dir = str(path.parent)
        data = _read(path)
    entries = list(_entries(data, path, overrides, sections or {}))
    for section, key, value, where in entries:  # [job] first: it names the task
        if section == "job" and key == "task":
            _apply(cfg, section, key, value, where)
    if task is not None:
        cfg.job.task = task if isinstance(task, str) else getattr(task, "name", type(task).__name__)
    task_obj = resolve_task(task if task is not None else cfg.job.task, cfg.base_dir,
                            where=f"{cfg.source}: [job] task")
    cfg.task_sections = {name: cls() for name, cls in (getattr(task_obj, "sections", {}) or {}).items()}
    classes = section_classes(getattr(task_obj, "sections", None))
    for section in data:
        if section not in classes:
            raise ConfigError(f"{path}: unknown section [{_shown(section)}]; {_closest(section, classes)}")
    for section, key, value, where in entries:
        _apply(cfg, section, key, value, where)
    cfg.task = task_obj
    _check_cross(cfg)
    return cfg


def _check_cross(cfg: JobConfig) -> None:
    where = cfg.source
    betas = cfg.train.betas
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"{where}: [train] betas = {betas!r}: give two numbers in [0, 1), e.g. [0.9, 0.999]")
    p = cfg.pipeline
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in p.cuts):
        raise ConfigError(f"{where}: [pipeline] cuts = {p.cuts!r}: give positive integer layer indices, "
                          "the first layer of stages 1..pp-1, e.g. [3]")
    if p.partition == "cuts" and len(p.cuts) != cfg.grid.pp - 1:
        raise ConfigError(f"{where}: [pipeline] cuts has {len(p.cuts)} entries but pp = {cfg.grid.pp} "
                          f"needs {cfg.grid.pp - 1}; list the first layer index of stages 1..pp-1")
    if p.partition != "cuts" and p.cuts:
        raise ConfigError(f"{where}: [pipeline] cuts is set but partition = '{p.partition}'; "
                          f"set partition = 'cuts' or remove cuts")
    if cfg.comm.zero and cfg.train.precision == "fp16":
        raise ConfigError(f"{where}: [comm] zero = 1 does not support [train] precision = fp16 (loss scaling "
                          "unscales whole gradients); use precision = bf16 or fp32, or zero = 0")
    if cfg.pipeline.microbatches and cfg.pipeline.microbatches < cfg.grid.pp:
        raise ConfigError(f"{where}: [pipeline] microbatches = {p.microbatches} is fewer than the "
                          f"{cfg.grid.pp} stages; use at least {cfg.grid.pp}")


def describe_keys(task_sections: dict | None = None) -> str:
    """Every section and key with its default and help, for `mpitrain keys`."""
    lines = []
    for section, cls in section_classes(task_sections).items():
        lines.append(f"[{section}]")
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            lines.append(f"  {f.name} = {default!r:<14}  {f.metadata.get('help', '')}")
    return "\n".join(lines)
