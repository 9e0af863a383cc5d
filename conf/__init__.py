"""The package's Hydra configs, installed as ``sofo_lab.conf`` (pyproject.toml's package-dir):
``CONF_DIR`` is where they are, the repository's conf/ for an editable install and the package's
copy after ``pip install .``, whatever the working directory."""
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent)
if not (Path(CONF_DIR) / "config.yaml").is_file():
    raise FileNotFoundError(f"sofo-run cannot find its configs (config.yaml) in {CONF_DIR}; reinstall the package")
