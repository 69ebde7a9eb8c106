"""Fixtures the test modules share, and the test tiers.

Every test module sets `pytestmark` to one tier (markers declared in pyproject.toml), so
`pytest -m config|unit|golden|e2e` runs one tier; `make test` runs them all:
- config: Hydra composition, the sweep file, the Makefile's install logic (seconds, no model).
- unit:   the tiny preset and the components around it, in-process.
- golden: comparisons with the reference outputs in ../shared/golden (Microsoft's code's results).
- e2e:    the entry points run end to end (train.py, the CLIs, benchmarks, the browser), mostly as
          subprocesses. A test of another tier's module that runs an entry point carries its own
          `@pytest.mark.e2e`, which replaces its module's tier.
`slow` (also declared there) marks the tests `make test-fast` leaves out, whatever their tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

CONF = Path(__file__).resolve().parents[1] / "conf"
TIERS = ("config", "unit", "golden", "e2e")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One tier a test: its own tier mark where it has one, else its module's `pytestmark`. A module
    without a tier fails the collection, naming it."""
    modules = {}
    for item in items:
        module = item.getparent(pytest.Module)
        module_tiers = modules.setdefault(module, [mark for mark in module.own_markers if mark.name in TIERS])
        own_tiers = [mark for mark in item.own_markers if mark.name in TIERS]
        if len(own_tiers or module_tiers) != 1:
            raise pytest.UsageError(
                f"{item.nodeid}: a test needs exactly one tier mark, has "
                f"{[mark.name for mark in own_tiers or module_tiers]}; set `pytestmark = pytest.mark.<tier>` "
                f"in its module, a tier of {TIERS} (tests/conftest.py)"
            )
        if not own_tiers:
            item.add_marker(module_tiers[0].name)
    for module, tiers in modules.items():  # the tests carry their tier now: drop the module's
        module.own_markers[:] = [mark for mark in module.own_markers if mark not in tiers]


@pytest.fixture(scope="module")
def hydra_context():
    """conf/ as Hydra's config dir, with phi3v's schemas registered, for `hydra.compose`."""
    from hydra import initialize_config_dir

    from phi3v.config_schema import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices gain nothing from intra-op threads, and when anything else runs on the machine
    OpenMP's spinning threads make every matmul 10-40x slower; restored for the other test modules.
    A module opts in with `pytest.mark.usefixtures("one_thread")` in its `pytestmark`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def processor(request):
    """The tiny preset's processor; a module's `SPEC` (a ModelSpec) sets its num_crops (default: the
    preset's 4)."""
    from phi3v.modeling.model_spec import ModelSpec, load_processor

    return load_processor(getattr(request.module, "SPEC", ModelSpec()))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Two plain product photos: a landscape one and a portrait one (its HD canvas is transposed)."""
    return [Image.new("RGB", (300, 200), "red"), Image.new("RGB", (200, 300), "blue")]
