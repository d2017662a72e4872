"""Datasets shipped inside the package, loadable by a short name.

They are ordinary Minari datasets under ``metaconstraint/datasets/`` (laid out as a Minari
root), so plain Minari reads them too::

    MINARI_DATASETS_PATH=$(python -c "import metaconstraint.data as d; print(d.builtin_root())") \\
        python -c "import minari; print(minari.load_dataset('metaconstraint/pendulum/medium-v0'))"
"""

from __future__ import annotations

from pathlib import Path

# short name -> Minari dataset id inside the package's datasets root
BUILTIN: dict[str, str] = {
    "pendulum-medium": "metaconstraint/pendulum/medium-v0",
}


def builtin_root() -> Path:
    """The Minari root folder of the shipped datasets."""
    return Path(__file__).resolve().parent.parent / "datasets"


def builtin_path(name: str) -> Path:
    """Folder of a shipped dataset (the one holding ``data/``)."""
    if name not in BUILTIN:
        raise KeyError(f"no built-in dataset '{name}'; built-in: {', '.join(sorted(BUILTIN))}")
    path = builtin_root() / BUILTIN[name]
    if not (path / "data" / "metadata.json").is_file():
        raise FileNotFoundError(
            f"built-in dataset '{name}' is missing from the installed package ({path}); reinstall metaconstraint "
            "or rebuild it with scripts/make_datasets.sh builtin"
        )
    return path
