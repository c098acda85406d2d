import os

import pytest

os.environ.setdefault("CI", "1")  # quiet progress bars

from cocosnet.data.synthetic import generate  # noqa: E402
from tests.helpers import TINY  # noqa: E402


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory):
    """A tiny synthetic dataset, generated once per session. Do not modify it."""
    root = tmp_path_factory.mktemp("raw") / "synthetic"
    generate(TINY, root, workers=1, show_progress=False)
    return root
