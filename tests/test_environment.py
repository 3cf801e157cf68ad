"""The environment: pyproject and environment.yml agree, the CLI answers --help, nothing reaches the network."""
import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from skinseg.paths import PROJ_ROOT


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].strip().lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((PROJ_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"] + extras["dev"] + extras["weights"] + extras["notebooks"]}
    env = yaml.safe_load((PROJ_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {_name(r) for r in pip} == wanted
    assert "python=3.11" in env["dependencies"]
    assert "albumentations==2.0.8" in project["dependencies"] and "albumentations==2.0.8" in pip


def test_albumentations_update_check_is_disabled_by_the_package():
    code = "import os; os.environ.pop('NO_ALBUMENTATIONS_UPDATE', None); import skinseg.data.augment; print(os.environ['NO_ALBUMENTATIONS_UPDATE'])"
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"


def _subcommands():
    from skinseg.cli import build_parser

    action = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", [None] + _subcommands())
def test_every_subcommand_has_help(command):
    args = [sys.executable, "-m", "skinseg"] + ([command] if command else []) + ["--help"]
    out = subprocess.run(args, capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "usage: skinseg" in out.stdout


def test_docs_configuration_is_generated_from_the_config_and_names_every_key():
    """docs/configuration.md is what `make docs` writes from the fields: a field added, renamed or re-described
    without regenerating it fails here."""
    from skinseg.config import Config, markdown

    doc = (PROJ_ROOT / "docs" / "configuration.md").read_text()
    assert doc == markdown(), "docs/configuration.md is stale: run `make docs`"
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in rows] == Config.keys()
    assert all(Config.model_fields[k].description for k in Config.keys())
    assert "| `lr` | `0.001` | number, > 0 | learning rate" in doc
    assert "| `model` | `unet` | `unet`, `unet-residual`" in doc
