"""Every module has a place in the import-linter layers that ``make lint`` checks.

import-linter only checks the modules a contract names: a new module left out of the
layers could import anything. These tests read the contracts in pyproject.toml.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the folders behind the installed subpackages (pyproject.toml's package-dir)
FOLDERS = {
    "deskpulse.models": "models",
    "deskpulse.streams": "streams",
    "deskpulse.exporters": "exporters",
}


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["type"]: contract for contract in config["contracts"]}


def _layers() -> list[set[str]]:
    """The layers, top first, each the set of module names it joins with ``:`` or ``|``."""
    layers = []
    for layer in _contracts()["layers"]["layers"]:
        names = layer.replace("\\", " ").replace("|", ":").split(":")
        layers.append({name.strip() for name in names})
    return layers


def _modules() -> set[str]:
    """Every module and package of deskpulse.models, .streams and .exporters, by name."""
    found = set()
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.add(".".join((package, *parts)))
    return found


def _placed(module: str, names: set[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def test_every_module_is_in_a_layer() -> None:
    placed = set().union(*_layers())
    # the subpackages themselves hold no code; their modules are what the layers place
    missing = sorted(module for module in _modules() - set(FOLDERS) if not _placed(module, placed))
    assert not missing, f"add these to a layer in pyproject.toml: {missing}"


def test_the_layers_name_only_modules_that_exist() -> None:
    modules = _modules()
    assert sorted(set().union(*_layers()) - modules) == []


def test_everything_below_the_dev_tools_is_forbidden_them() -> None:
    layers = _layers()
    devtools = "deskpulse.streams.devtools"
    below = set().union(*layers[layers.index({devtools}) + 1 :])
    forbidden = _contracts()["forbidden"]
    assert forbidden["forbidden_modules"] == [devtools]
    assert set(forbidden["source_modules"]) == below  # type: ignore[arg-type]
