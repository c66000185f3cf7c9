"""The package layout: every module imports on its own (no import cycles), dependencies point down
the layers, modules stay readable, and the console scripts match the command table."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Layers, bottom first: a module may import from its own layer and the ones below, never above.
LAYERS = [
    {"dr.data", "dr.config", "dr.miners", "dr.losses"},
    {"dr.models", "dr.plots"},
    {"dr.retrieval", "dr.evaluation", "dr.export", "dr.miners.candidates", "dr.validate", "dr.checks"},
    {"dr.sampling", "dr.teachers"},
    {"dr.training", "dr.refresh"},
    {"dr.pipeline"},
    {"dr.cli"},
]


def _modules() -> list[str]:
    names = []
    for pkg in ("dr", "losses", "miners"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "resources" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            if pkg != "dr":  # losses/ and miners/ install as dr.losses and dr.miners
                parts = ("dr", *parts)
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _layer(module: str) -> int | None:
    """The layer of the longest prefix of ``module`` listed in :data:`LAYERS`."""
    best, layer_of = None, None
    for i, layer in enumerate(LAYERS):
        for p in layer:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best)):
                best, layer_of = p, i
    return layer_of


def test_every_module_imports_on_its_own():
    """Each module is imported first, in a fresh state of our packages: an import cycle that
    depends on import order fails here. (Third-party packages stay loaded, for speed.)"""
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'dr']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *_modules()], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def test_imports_point_down_the_layers():
    upward = []
    for module in _modules():
        if module.startswith("dr.cli") or _layer(module) is None:
            continue
        for node in ast.walk(ast.parse(_source(module))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                target = node.module
            elif isinstance(node, ast.Import):
                target = node.names[0].name
            else:
                continue
            layer = _layer(target)
            if layer is not None and layer > _layer(module):
                upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_modules_stay_short():
    long = {m: n for m in _modules() if (n := len(_source(m).splitlines())) > 400}
    assert not long, long


def _path(module: str) -> Path:
    parts = module.split(".")
    if parts[:2] in (["dr", "losses"], ["dr", "miners"]):
        parts = parts[1:]
    path = ROOT / Path(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _source(module: str) -> str:
    return _path(module).read_text()


def test_console_scripts_match_the_command_table():
    from dr.cli import COMMANDS

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {name: f"dr.cli.{module}:main" for name, (module, _) in COMMANDS.items()}
    for name, (module, config) in COMMANDS.items():
        assert (ROOT / "dr" / "cli" / f"{module}.py").is_file(), name
        assert (ROOT / "conf" / f"{config}.yaml").is_file(), name


@pytest.mark.parametrize(
    "name",
    [
        "dr.data",
        "dr.models",
        "dr.retrieval",
        "dr.evaluation",
        "dr.export",
        "dr.losses",
        "dr.miners",
        "dr.sampling",
        "dr.teachers",
        "dr.training",
        "dr.refresh",
        "dr.pipeline",
    ],
)
def test_subpackages_list_their_public_names(name):
    import importlib

    package = importlib.import_module(name)
    assert package.__all__ and all(hasattr(package, n) for n in package.__all__)


def test_every_config_group_ships_with_the_package():
    """conf/ is installed as dr.conf; each config group is a data folder that pyproject must list
    (setuptools warns about, and may one day drop, a data subfolder that is not listed)."""
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    groups = {f"dr.conf.{p.name}" for p in (ROOT / "conf").iterdir() if p.is_dir() and any(p.glob("*.yaml"))}
    assert groups <= packages, sorted(groups - packages)


def test_losses_and_miners_install_under_dr_only():
    """losses/ and miners/ are folders of the repository but packages of dr (dr.losses, dr.miners):
    generic top-level names would collide with other packages in a user's environment."""
    code = (
        "import importlib.util as u; print(u.find_spec('losses'), u.find_spec('miners'), u.find_spec('dr.losses') "
        "is not None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True
    ).stdout.split()
    assert out == ["None", "None", "True"], out


def test_every_loss_declares_its_contract():
    """Each loss class of dr.losses declares the batch fields it takes, a citation (paper and
    equation) and the score scale it lives on (dr/losses/base.py), so nothing else needs to know it."""
    import inspect

    import dr.losses as losses
    from dr.losses.base import BATCH_FIELDS, Loss

    classes = [c for _, c in inspect.getmembers(losses, inspect.isclass) if issubclass(c, Loss) and c is not Loss]
    assert len(classes) >= 6
    for cls in classes:
        assert cls.fields and set(cls.fields) <= set(BATCH_FIELDS), cls
        assert set(cls.required) <= set(cls.fields), cls
        assert "et al." in cls.citation and ("Eq." in cls.citation or "Sec." in cls.citation), cls
        assert cls.score_scale, cls
        assert "**" not in str(inspect.signature(cls.forward)) or cls.__name__ == "DistillationLoss", cls
    # and every loss config builds one of them
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    for path in sorted((ROOT / "conf" / "loss").glob("*.yaml")):
        assert get_class(OmegaConf.load(path)._target_) in classes, path


def test_no_target_strings_are_compared_in_the_package():
    """Code asks classes (the loss contract), not `_target_` strings: no "losses." / "miners." literal
    in dr/ outside docstrings and configs-as-data."""
    offenders = []
    for path in sorted((ROOT / "dr").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    for const in ast.walk(side):
                        if (
                            isinstance(const, ast.Constant)
                            and isinstance(const.value, str)
                            and ("losses." in const.value or "miners." in const.value)
                        ):
                            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def _calls(predicate) -> list[tuple[str, str, ast.Call]]:
    """``(file, enclosing function, call)`` for every call in the package that ``predicate`` accepts."""
    found = []
    for pkg in ("dr", "losses", "miners"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
                for node in ast.walk(function):
                    if isinstance(node, ast.Call) and predicate(node):
                        found.append((str(path.relative_to(ROOT)), function.name, node))
    return found


def _is_call_of(node: ast.Call, owner: str, name: str) -> bool:
    f = node.func
    return isinstance(f, ast.Attribute) and f.attr == name and isinstance(f.value, ast.Name) and f.value.id == owner


def test_checkpoints_are_never_unpickled_with_code():
    """``torch.load`` only with ``weights_only=True``: a pickle may run any code while it loads
    (issue 25: a crafted ``.ckpt`` given as ``model=`` ran code)."""
    loads = _calls(lambda n: _is_call_of(n, "torch", "load"))
    assert loads, "expected the checkpoint loader's torch.load"
    for file, function, call in loads:
        flags = [k.value for k in call.keywords if k.arg == "weights_only"]
        assert len(flags) == 1 and isinstance(flags[0], ast.Constant) and flags[0].value is True, (
            f"{file}: {function} calls torch.load without weights_only=True"
        )
    unsafe = _calls(
        lambda n: any(
            k.arg == "weights_only" and not (isinstance(k.value, ast.Constant) and k.value.value is True)
            for k in n.keywords
        )
    )
    assert not unsafe, [f"{f}: {fn}" for f, fn, _ in unsafe]


#: Every ``shutil.rmtree`` in the package, by file and function, with what it removes: only folders
#: dr itself created. A new call fails this test until it is reviewed and listed here (issue 25:
#: dr-export removed whatever folder ``output=`` named).
RMTREE_SITES = {
    ("dr/export/export.py", "export"): "the export's temporary folder (mkdtemp), after a failure",
    ("dr/export/export.py", "_swap_into_place"): "the side folder (mkdtemp) holding the replaced previous dr export",
    ("dr/refresh/store.py", "clean_refresh_dir"): "orphan .tmp-* and v<N> folders of the run's own refresh store",
    ("dr/refresh/store.py", "stage_version"): "the store's own .tmp-v<N>-<pid> and v<N> folders",
    ("dr/refresh/store.py", "mark_failed"): "the snapshot the store staged in v<N>/",
    ("dr/refresh/job.py", "run_job"): "the snapshot the store staged in v<N>/",
    (
        "dr/data/corpus_cache.py",
        "forget_old_versions",
    ): "the Arrow table of a corpus's previous version, in dr's own corpus cache",
    (
        "dr/data/hf.py",
        "_write_folder",
    ): "the temporary folder (mkdtemp) of a dataset's files, after a failure or a lost race",
    ("dr/data/hf.py", "_forget_older"): "the files of a previous version of the same dataset, in dr's own hf cache "
    "(a 20-hex-digit folder whose manifest names the same source)",
    ("dr/data/hf_write.py", "write_text_dataset"): "the temporary folder (mkdtemp) of dr-mine's datasets output, "
    "holding the replaced previous datasets folder once the new one is in place",
    (
        "dr/pipeline/runner.py",
        "run_stages",
    ): "an unfinished stage folder of the pipeline's own cache (no DONE.json), before the stage runs again",
}


def test_rmtree_only_removes_folders_dr_created():
    sites = {(file, function) for file, function, _ in _calls(lambda n: _is_call_of(n, "shutil", "rmtree"))}
    assert sites == set(RMTREE_SITES), (
        f"unreviewed: {sorted(sites - set(RMTREE_SITES))}, gone: {sorted(set(RMTREE_SITES) - sites)}"
    )
