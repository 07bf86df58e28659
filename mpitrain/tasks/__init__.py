"""Resolve a job's `[job] task` to a task object.

`task` is a built-in name (`ner`, `gpt`) or the user's own code:
``"package.module:factory"`` (imported like any module) or
``"path/to/file.py:factory"`` (relative to the job file's folder). `factory` is
called with no arguments and returns the task (a class works). Every failure is
one line naming the job file and what to fix.

(`mpitrain.task.run_user_code` calls the task's own code: an exception that is
not a `UsageError` becomes a `TaskError`, one line, exit code 2.) `drop_invisible` removes the invisible characters the
built-in data readers ignore.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from ..errors import ConfigError

# byte-order mark (zero-width no-break space), zero-width space, non-joiner and joiner, word joiner
INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060"
_NO_INVISIBLE = dict.fromkeys(map(ord, INVISIBLE))


def drop_invisible(text: str) -> str:
    """`text` without byte-order marks and zero-width characters (`INVISIBLE`)."""
    return text.translate(_NO_INVISIBLE)


BUILTIN = {
    "ner": "mpitrain.tasks.ner.task:NerTask",
    "gpt": "mpitrain.tasks.gpt.task:GptTask",
}


def _load_file(path: Path, where: str):
    if not path.is_file():
        raise ConfigError(f"{where}: file {path} not found; give a path relative to the job file, "
                          f"e.g. 'models/my_task.py:make_task'")
    # the same name on every rank, so objects of its classes unpickle anywhere
    name = "mpitrain_user_task_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # its own helper modules import as usual
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"{where}: {path} failed to import: {type(exc).__name__}: {exc}; "
                          "fix the file") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _load_module(name: str, where: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ConfigError(f"{where}: cannot import module '{name}'; install it or put it on "
                              f"PYTHONPATH, or give a file: 'path/to/file.py:factory'") from None
        raise ConfigError(f"{where}: importing '{name}' failed: {exc}; fix the module") from None
    except Exception as exc:
        raise ConfigError(f"{where}: importing '{name}' failed: {type(exc).__name__}: {exc}; "
                          "fix the module") from None


def check_task(task, where: str):
    """Refuse an object that lacks a required method or has malformed sections."""
    from ..task import REQUIRED_METHODS

    missing = [m for m in REQUIRED_METHODS if not callable(getattr(task, m, None))]
    if missing:
        raise ConfigError(f"{where}: the task ({type(task).__name__}) has no method "
                          f"{', '.join(missing)}; define {' and '.join(m + '(cfg, prepared)' for m in missing)} "
                          f"(see mpitrain.Task)")
    sections = getattr(task, "sections", {}) or {}
    if not isinstance(sections, dict):
        raise ConfigError(f"{where}: the task's `sections` must be a dict of section name -> dataclass")
    from ..config import GENERIC_SECTIONS

    for name, cls in sections.items():
        if name in GENERIC_SECTIONS:
            raise ConfigError(f"{where}: the task defines section [{name}], which is a generic section; "
                              "rename it (e.g. [model] or [data])")
        if not isinstance(cls, type) or not hasattr(cls, "__dataclass_fields__"):
            raise ConfigError(f"{where}: the task's section [{name}] is not a dataclass; declare it "
                              "with @dataclass and fields made by mpitrain.config.opt")
    return task


def resolve_task(spec, base_dir: str | Path = ".", where: str = "[job] task"):
    """A task object from a spec string (see the module doc), or the object itself."""
    if not isinstance(spec, str):
        return check_task(spec, where)
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        raise ConfigError(f"{where}: '{spec}' is not a built-in task ({', '.join(BUILTIN)}) nor "
                          "'module:factory' / 'file.py:factory'; e.g. task = \"my_tasks:MyTask\"")
    location, factory_name = target.rsplit(":", 1)
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        module = _load_file(path if path.is_absolute() else Path(base_dir) / path, where)
    else:
        module = _load_module(location, where)
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise ConfigError(f"{where}: '{location}' has no '{factory_name}'; name a function or class "
                          f"defined there that returns the task")
    try:
        task = factory()
    except Exception as exc:
        raise ConfigError(f"{where}: {factory_name}() failed: {type(exc).__name__}: {exc}") from None
    return check_task(task, where)
