"""The two spellings of ``config.Config``: YAML files and command-line flags, both derived
from its declaration, with strict types (an unknown key or a wrong type is one clear line)."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from ignite_rn50.config.declaration import FIELDS, Config, default_of, flag, key_of, validate
from ignite_rn50.errors import UserError

ATTRIBUTE_OF_KEY = {key_of(name): name for name in FIELDS}


# --- types ----------------------------------------------------------------------------------

def _type_of(name: str) -> Any:
    return typing.get_type_hints(Config)[name]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    return {type(None): "null", int: "integer", float: "number", bool: "true/false",
            str: "string"}.get(tp, str(tp))


def _check_type(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value coerced); int is accepted for float, bool is never an int."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, coerced = _check_type(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        items = [_check_type(v, typing.get_args(tp)[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported config type {tp}")


# --- YAML -------------------------------------------------------------------------------------

def load_yaml(path: str | Path) -> dict[str, Any]:
    """The file's options as Config attribute names, type-checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to "
                        "--config (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:  # unreadable (permissions, an I/O error)
        raise UserError(f"config file {path} cannot be read ({exc.strerror}); fix its "
                        "permissions or pass another file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"config file {path} is not valid YAML ({first}); fix the file") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value")
    values = {}
    for key, value in raw.items():
        name = ATTRIBUTE_OF_KEY.get(str(key).replace("-", "_"))
        if name is None:
            raise UserError(f"unknown key '{key}' in config file {path}; valid keys: "
                            f"{', '.join(ATTRIBUTE_OF_KEY)}")
        ok, coerced = _check_type(value, _type_of(name))
        if not ok:
            raise UserError(f"key '{key}' in config file {path} must be "
                            f"{_describe(_type_of(name))}, got {value!r}")
        values[name] = coerced
    return values


def save_config(cfg: Config, path: Path) -> None:
    """The resolved config, in the same YAML schema: rerunnable with --config."""
    path.write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))


# --- command line ---------------------------------------------------------------------------

def _parse_scalar(tp: Any):
    """argparse type= callable for one (optional) scalar type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = args[0]

    def parse(text: str):
        if type(None) in typing.get_args(tp) and text.lower() in ("none", "null", "dynamic"):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_describe(base)}, got {text!r}") from None

    parse.__name__ = _describe(base)
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit 2 (its default), without usage."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_option(group: argparse._ArgumentGroup, name: str) -> None:
    meta = FIELDS[name].metadata
    tp = _type_of(name)
    help_text = f"{meta['help']} (default: {meta['shows'] or default_of(name)})"
    base_types = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    if base_types[0] is bool:
        group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                           help=help_text)
    elif typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        group.add_argument(flag(name), dest=name, nargs="*", type=_parse_scalar(item),
                           metavar=_describe(item).upper(), help=help_text)
    else:
        choices = meta["choices"]
        group.add_argument(flag(name), dest=name, type=_parse_scalar(tp), choices=choices,
                           metavar=None if choices is None else
                           "{" + ",".join(str(c) for c in choices if c is not None) + "}",
                           help=help_text)


def build_parser(prog: str = "python -m ignite_rn50.run",
                 description: str = "ResNet on CIFAR with PyTorch-Ignite (npu, cuda or cpu; "
                 "one process, many, or many nodes).") -> argparse.ArgumentParser:
    # each help text states its default once; argparse's own "(default: ...)" would repeat it
    parser = _Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                     allow_abbrev=False)  # a misspelt flag is an error, not a guess
    parser.add_argument("--config", help="YAML file of options (flags override it)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in FIELDS:
        group_name = FIELDS[name].metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        _add_option(groups[group_name], name)
    return parser


def make_config(values: dict[str, Any], data_optional: bool = False) -> Config:
    cfg = Config(**values)
    validate(cfg, data_optional)
    return cfg


# What only concerns training, set aside by the commands that read a checkpoint (evaluate,
# export) so that a run's config.yaml applies to them as it is.
TRAINING_ONLY = {"resume": None, "init_from": None, "graph": False, "compile": False,
                 "amp_backend": "native", "download": False, "sync_bn": False,
                 "accum_steps": 1, "profile_steps": None}


def config_from_args(args: dict[str, Any], fixed: dict[str, Any] | None = None,
                     base: dict[str, Any] | None = None, data_optional: bool = False) -> Config:
    """Parsed flags (argparse's dict, unset flags absent) over the --config file over
    ``base`` (what a checkpoint says of its run) over the declared defaults; ``fixed`` values
    over all of them. ``data_optional``: --data may be absent (export and predict read no
    dataset unless given one)."""
    args = dict(args)
    values = dict(base or {})
    values.update(load_yaml(args.pop("config")) if "config" in args else {})
    values.update(args)
    values.update(fixed or {})
    return make_config(values, data_optional)


# --- a dashboard's stored parameters (ClearML) -----------------------------------------------

def _from_text(text: str, tp: Any) -> Any:
    """A value as a dashboard stores it (a string) in the declared type: '' and none/null are
    None where None is allowed; lists as JSON/YAML ('[60, 120]') or comma-separated; the rest
    by YAML's reading ('0.02', '7', 'true'), so '7.5' stays a float and fails an int."""
    args = typing.get_args(tp)
    if type(None) in args and text.strip().lower() in ("", "none", "null"):
        return None
    if typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in args):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = None
        if not isinstance(value, list):
            value = [yaml.safe_load(v) for v in text.split(",") if v.strip()]
        return value
    if str in args or tp is str:
        return text
    for number in (int, float):  # YAML 1.1 reads '1e-3' as a string
        if number in (*args, tp):
            try:
                return number(text.strip())
            except ValueError:
                pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def config_from_dashboard(cfg: Config, stored: dict[str, Any]) -> Config:
    """``cfg`` with the values a dashboard (ClearML, under an agent) holds for its parameters,
    ``{"training/lr": "0.02", ...}``: each read and checked as the same option's flag would
    be. A bad value is one line naming the parameter as the dashboard shows it."""
    values = {name: getattr(cfg, name) for name in FIELDS}
    edited = []
    for where, raw in stored.items():
        name = ATTRIBUTE_OF_KEY.get(where.split("/", 1)[-1])
        if name is None:
            continue
        tp = _type_of(name)
        value = _from_text(raw, tp) if isinstance(raw, str) else raw
        ok, coerced = _check_type(value, tp)
        if not ok:
            raise UserError(f"ClearML parameter {where} must be {_describe(tp)}, got {raw!r}; "
                            "fix it in the task's hyperparameters")
        if coerced != values[name]:
            edited.append(where)
        values[name] = coerced
    try:
        return make_config(values)
    except UserError as exc:
        raise UserError(f"ClearML parameter {' or '.join(edited) or 'values'}: {exc}; fix it "
                        "in the task's hyperparameters") from None


def parse_config(argv: list[str] | None = None) -> Config:
    return config_from_args(vars(build_parser().parse_args(argv)))
