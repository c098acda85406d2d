import os

import pytest

os.environ.setdefault("CI", "1")  # quiet progress bars

from cocosnet.data.synthetic import SyntheticSpec, generate  # noqa: E402

TINY = SyntheticSpec(num_identities=5, views_per_identity=3, image_width=102, image_height=150,
                     val_fraction=0.4, jpeg_quality=95, seed=3)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory):
    """A tiny synthetic dataset, generated once per session. Do not modify it."""
    root = tmp_path_factory.mktemp("raw") / "synthetic"
    generate(TINY, root, workers=1, show_progress=False)
    return root
