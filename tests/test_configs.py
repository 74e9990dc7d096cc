"""configs/*.yaml are generated from their recipes (scripts/write_config.py): a recipe changed without regenerating
its YAML would make `--config configs/<recipe>.yaml` silently run other values than the recipe file says."""

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "pretrain").glob("*.py"))


def test_every_recipe_has_a_config():
    assert RECIPES == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_config_is_generated_from_its_recipe(recipe):
    render = runpy.run_path(str(ROOT / "scripts" / "write_config.py"))["render"]
    assert (ROOT / "configs" / f"{recipe}.yaml").read_text() == render(recipe), \
        f"configs/{recipe}.yaml is out of date: run `python scripts/write_config.py {recipe}`"
