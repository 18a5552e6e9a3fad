"""Find a trainer by built-in name or by ``target: "pkg.mod:obj"``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any

from optsearch.errors import ConfigError
from optsearch.trainers.base import FunctionTrainer, Trainer

# name -> "module:Class"; imported lazily so the CLI starts fast.
BUILTIN = {
    "digits": "optsearch.trainers.digits:DigitsTrainer",
    "cifar10": "optsearch.trainers.cifar10:Cifar10Trainer",
}


def _import(target: str, key: str) -> Any:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(key, target, "must look like 'package.module:function'")
    if os.getcwd() not in sys.path:  # user trainers import from the working directory, as scripts do
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(key, target, f"cannot import {module}: {err}") from None
    except SyntaxError as err:
        raise ConfigError(key, target, f"{err.filename}, line {err.lineno}: SyntaxError: {err.msg}") from None
    except Exception as err:  # noqa: BLE001 - the module raised while importing
        spec = importlib.util.find_spec(module)
        where = spec.origin if spec is not None and spec.origin else module
        raise ConfigError(key, target, f"{where}: importing it raised {type(err).__name__}: {err}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(key, target, f"{module} has no attribute {attr}")
        obj = getattr(obj, part)
    return obj


def _resolve(name: str | None, target: str | None) -> Any:
    if target is not None:
        return _import(target, "trainer.target")
    if name not in BUILTIN:
        raise ConfigError("trainer.name", name, f"unknown trainer; built-in: {sorted(BUILTIN)}, or give target: 'pkg.mod:fit'")
    return _import(BUILTIN[name], "trainer.name")


def check_options(name: str | None, target: str | None, options: dict) -> None:
    """Validate a trainer's options without loading any data (raises ConfigError)."""
    obj = _resolve(name, target)
    if inspect.isclass(obj) and hasattr(obj, "Options"):
        from optsearch.trainers.base import options_from

        options_from(obj.Options, options)
    elif not callable(obj):
        raise ConfigError("trainer.target", target, "is not callable")


def planned_budget(name: str | None, target: str | None, options: dict):
    """The training budget (``BuildContext``) a trainer will pass to ``ctx.build``, known
    before any data loads, or None. A trainer class says it with ``Options.budget()``; the
    config uses it to tell, at load time, which sampled points the builders will reject."""
    obj = _resolve(name, target)
    if inspect.isclass(obj) and hasattr(getattr(obj, "Options", None), "budget"):
        from optsearch.trainers.base import options_from

        return options_from(obj.Options, options).budget()
    return None


def eval_sizes(name: str | None, target: str | None, options: dict) -> dict[str, int]:
    """{metric: examples it is computed on} when the trainer says (``Options.eval_sizes()``),
    else {}. One example, 1 / size, is the smallest difference the metric can show."""
    obj = _resolve(name, target)
    if inspect.isclass(obj) and hasattr(getattr(obj, "Options", None), "eval_sizes"):
        from optsearch.trainers.base import options_from

        return dict(options_from(obj.Options, options).eval_sizes())
    return {}


def load_trainer(name: str | None, target: str | None, options: dict) -> Trainer:
    """A ready trainer. Classes get the options; a plain function reads them from ctx.options."""
    obj = _resolve(name, target)
    if inspect.isclass(obj):
        if hasattr(obj, "Options"):
            from optsearch.trainers.base import options_from

            return obj(options_from(obj.Options, options))
        return obj(**options)
    if callable(obj) and hasattr(obj, "fit"):
        return obj
    if callable(obj):
        return FunctionTrainer(obj)
    raise ConfigError("trainer.target", target, "is not callable")
