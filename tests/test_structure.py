"""The code's shape is kept, not hoped for: short functions and modules, no import cycle, the
wiring as a table of contents, device names only in the device seam, ignite's private names
still where we use them."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "ignite_rn50"
MODULES = sorted(PACKAGE.rglob("*.py"))  # every room's modules, not only the top level


def _name(path: Path) -> str:
    """``training.process``, ``errors``: the module's dotted name inside the package."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


NAMES = {_name(p) for p in MODULES}


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [(f"{_name(path)}:{node.name}", node.end_lineno - node.lineno + 1)
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_over_60_lines_no_module_over_400() -> None:
    too_long = [(name, n) for path in MODULES for name, n in _functions(path) if n > 60]
    assert not too_long, too_long
    big = [(_name(p), n) for p in MODULES if (n := len(p.read_text().splitlines())) > 400]
    assert not big, big


def test_at_most_ten_modules_at_the_top_level() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top
    assert len([p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]) >= 6


def test_the_wiring_is_a_table_of_contents() -> None:
    lengths = dict(_functions(PACKAGE / "training" / "process.py"))
    assert lengths["training.process:run_training"] <= 25, lengths
    assert all(n <= 40 for name, n in _functions(PACKAGE / "run.py")), _functions(
        PACKAGE / "run.py")


def _our_imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports: at the top, inside functions, and under
    TYPE_CHECKING alike (a type-only cycle is still two modules that need each other).
    ``from ignite_rn50.a import b`` is the module ``a.b`` when there is one, else ``a``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "ignite_rn50" or node.module.startswith("ignite_rn50.")):
            base = node.module.removeprefix("ignite_rn50").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.add(sub if sub in NAMES or f"{sub}.__init__" in NAMES else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("ignite_rn50.") for a in node.names
                      if a.name.startswith("ignite_rn50.")}
    return {m.removesuffix(".__init__") for m in found} - {_name(path), ""}


def test_every_import_of_ours_names_a_module_that_exists() -> None:
    packages = {n.removesuffix(".__init__") for n in NAMES if n.endswith("__init__")}
    missing = {(_name(p), m) for p in MODULES for m in _our_imports(p)
               if m not in NAMES and m not in packages}
    assert not missing, missing


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {_name(p): _our_imports(p) for p in MODULES}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for m in graph if (c := cycle_from(m))]
    assert not cycles, cycles[0]


# The layer order of the package docstring: a room imports only from lower floors (and from
# its own modules); rooms on one floor are independent of each other.
FLOORS = [{"errors", "events"}, {"system"}, {"data", "model", "optim", "outputs", "deploy"},
          {"config"}, {"training"},
          {"run", "evaluate", "export", "predict", "modelzoo", "cli", "__main__", "__init__"}]


def _room(module: str) -> str:
    return module.split(".")[0]


def _floor(room: str) -> int:
    return next(i for i, rooms in enumerate(FLOORS) if room in rooms)


def test_no_room_imports_one_above_or_beside_it() -> None:
    rooms = {_room(n) for n in NAMES}
    assert rooms <= set().union(*FLOORS), rooms - set().union(*FLOORS)  # a new room: place it
    entry = FLOORS[-1]
    offenders = []
    for path in MODULES:
        me = _room(_name(path))
        for other in map(_room, _our_imports(path)):
            if other == me or (me in entry and other in entry):
                continue  # one room; the entry points share the one runner (cli)
            if _floor(other) >= _floor(me):
                offenders.append(f"{_name(path)} imports {other}")
    assert not offenders, offenders


def _top_level_imports(path: Path) -> tuple[set[str], set[str]]:
    """(third-party roots, modules of ours) imported at the module's top level."""
    top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import,
                                                                           ast.ImportFrom))]
    roots = {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    roots |= {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    ours = set()
    for node in top:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ignite_rn50"):
            base = node.module.removeprefix("ignite_rn50").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                ours.add(sub if sub in NAMES else base)
    return roots, ours


LIGHT = {"config.__init__", "config.declaration", "config.parsing", "data.__init__",
         "data.registry", "data.spec", "data.cifar", "data.synthetic", "data.folder",
         "data.files",
         "optim.__init__", "optim.schedule", "outputs.__init__",
         "outputs.trackers", "errors", "cli", "run", "evaluate", "export", "modelzoo",
         "predict"}


def test_what_help_needs_loads_without_torch() -> None:
    """The config room, the registries it lists (datasets, LR policies, trackers) and the
    entry points import nothing heavy at their top level, nor any module of ours that does,
    so --help answers before torch loads (tests/test_cli.py checks it runs)."""
    heavy = {"torch", "ignite", "numpy", "clearml", "torchvision"}
    for name in sorted(LIGHT):
        roots, ours = _top_level_imports(PACKAGE / (name.replace(".", "/") + ".py"))
        assert not roots & heavy, (name, roots & heavy)
        assert all(m in LIGHT or f"{m}.__init__" in LIGHT for m in ours), (name, ours - LIGHT)


SEAM = {"system.device", "system.precision", "system.distributed"}
DEVICE_WORDS = {"npu", "cuda", "hccl", "nccl", "torch_npu"}


def _device_code(path: Path) -> list[str]:
    """Device names used as code: string constants that are exactly a device or backend name
    (docstrings, messages and help texts are prose), torch.cuda / torch.npu, and torch's
    autoload switch for torch_npu."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                node.value in DEVICE_WORDS or node.value == "TORCH_DEVICE_BACKEND_AUTOLOAD"):
            found.append(f"{_name(path)}:{node.lineno}:{node.value!r}")
        if isinstance(node, ast.Attribute) and node.attr in ("cuda", "npu") and \
                isinstance(node.value, ast.Name) and node.value.id == "torch":
            found.append(f"{_name(path)}:{node.lineno}:torch.{node.attr}")
    return found


def test_device_names_only_in_the_seam() -> None:
    """system/device.py, precision.py and distributed.py tell devices apart, in every room;
    config/declaration.py declares the --device and --backend choices; cli.py turns torch's
    autoload of torch_npu off before torch loads (it must precede ``import torch``, so it
    cannot live in device.py)."""
    allowed = {"config.declaration": {"'npu'", "'cuda'", "'hccl'", "'nccl'"},
               "cli": {"'TORCH_DEVICE_BACKEND_AUTOLOAD'"}}
    offenders = []
    for path in MODULES:
        if _name(path) in SEAM:
            continue
        for hit in _device_code(path):
            if hit.rsplit(":", 1)[1] not in allowed.get(_name(path), set()):
                offenders.append(hit)
    assert not offenders, offenders
    assert _device_code(PACKAGE / "system" / "device.py")  # the check sees what it looks for


def test_ignite_private_names_we_use_exist() -> None:
    """distributed.py relies on three ignite 0.5 internals: the native computation model it
    subclasses (its spawn and worker task), ``_set_model`` and the registry of models; an
    ignite release that renames one fails here, not in a user's multi-process run."""
    import ignite.distributed.utils as idist_utils
    from ignite.distributed.comp_models.native import _NativeDistModel

    from ignite_rn50.system.distributed import HcclDistModel

    assert isinstance(idist_utils.registered_computation_models, tuple)
    assert HcclDistModel in idist_utils.registered_computation_models
    assert list(inspect.signature(idist_utils._set_model).parameters)[:1] == ["model"]
    spawn = inspect.signature(_NativeDistModel.spawn).parameters
    assert list(spawn)[:3] == ["fn", "args", "kwargs_dict"]
    for name in ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port",
                 "backend", "init_method"):
        assert name in spawn, name  # what ignite's spawn passes on to ours by keyword
    for name in ("_create_from_backend", "_init_from_context", "setup_env_vars",
                 "_setup_attrs", "_dist_worker_task_fn", "create_from_context",
                 "create_from_backend"):
        assert callable(getattr(_NativeDistModel, name, None)), name
    source = inspect.getsource(idist_utils.spawn)
    assert "comp_model_cls.spawn(" in source and "kwargs_dict=kwargs_dict" in source


def test_no_closure_captures_more_than_three_outer_names() -> None:
    """A nested function that needs more state than that wants to be a small class."""
    offenders = []
    for path in MODULES:
        tree = ast.parse(path.read_text())
        for outer in ast.walk(tree):
            if not isinstance(outer, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            local = {a.arg for a in outer.args.args + outer.args.kwonlyargs} | {
                n.id for n in ast.walk(outer) if isinstance(n, ast.Name)
                and isinstance(n.ctx, ast.Store)}
            for inner in ast.walk(outer):
                if inner is not outer and isinstance(inner, (ast.FunctionDef, ast.Lambda)):
                    used = {n.id for n in ast.walk(inner) if isinstance(n, ast.Name)}
                    inner_own = {a.arg for a in inner.args.args} | {
                        n.id for n in ast.walk(inner) if isinstance(n, ast.Name)
                        and isinstance(n.ctx, ast.Store)}
                    captured = (used & local) - inner_own
                    if len(captured) > 3:
                        offenders.append((_name(path), outer.name, sorted(captured)))
    assert not offenders, offenders


def test_ruff_enforces_six_parameters_at_most() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'select = \[[^\]]*"PLR0913"', text) and "max-args = 6" in text

