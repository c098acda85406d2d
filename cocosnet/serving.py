"""The trained model as an MLflow Model (pyfunc), for `mlflow models serve` and the model registry.

A request is a table, one row per image to draw:

| column | type | what |
|---|---|---|
| `exemplar` | string | the exemplar photo (PNG or JPEG bytes), base64 |
| `exemplar_pose` | string | its keypoints: an OpenPose or COCO JSON document, or a pose-transfer CSV (text) |
| `pose` | string | the target keypoints, the same formats, in the exemplar photo's pixels |
| `exemplar_pose_name`, `pose_name` | string, optional | the entry of a file with several people/images |

The answer has one column, `image`: the output (at the exemplar's size) as base64 PNG bytes. Each row
goes through `cocosnet generate`'s own code (`generate_one`), so a served answer equals the command's
output bit for bit.

    curl -X POST http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
      -d '{"dataframe_split": {"columns": ["exemplar", "exemplar_pose", "pose"], "data": [[...]]}}'
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from cocosnet.errors import DataError

REPO = Path(__file__).resolve().parents[1]
INPUT_COLUMNS = ("exemplar", "exemplar_pose", "pose")
NAME_COLUMNS = ("exemplar_pose_name", "pose_name")
SIGNATURE = ModelSignature(
    inputs=Schema([*(ColSpec("string", c) for c in INPUT_COLUMNS),
                   *(ColSpec("string", c, required=False) for c in NAME_COLUMNS)]),
    outputs=Schema([ColSpec("string", "image")]))
# What a served model imports (the pins of requirements.txt); `--env-manager local` uses the running env.
RUNTIME = ("torch", "numpy", "pandas", "pillow", "opencv-python-headless", "pyyaml", "scipy", "mlflow")


def runtime_requirements(requirements: Path = REPO / "requirements.txt") -> list[str]:
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        name = line.split("==")[0].strip()
        if name in RUNTIME:
            pins[name] = line.strip()
    return [pins.get(name, name) for name in RUNTIME]


def pose_suffix(text: str, where: str) -> str:
    """The file suffix `read_keypoints` needs for keypoints sent as text; `where` names the cell."""
    head = text.lstrip()[:200]
    if head.startswith(("{", "[")):
        return ".json"
    if head.lower().startswith("name:"):
        return ".csv"
    raise DataError(f"{where}: expected an OpenPose/COCO JSON document or a pose-transfer CSV "
                    f"(header name:keypoints_y:keypoints_x), got {head[:40]!r}")


def _image_bytes(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{where}: expected base64 image bytes ({exc})") from None


class CoCosNetModel(mlflow.pyfunc.PythonModel):
    """Loads the model file from the MLflow Model's artifacts; `predict` draws one image per row."""

    # The request is described by SIGNATURE; MLflow's type-hint validation (and its warning about
    # `predict` having no type hints, printed at import into every stage's stderr) is not used.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from cocosnet.generate import load_model_file

        self.model, self.cfg = load_model_file(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from cocosnet.generate import generate_one

        missing = [c for c in INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise DataError(f"request: missing column(s) {missing}; expected {list(INPUT_COLUMNS)}")
        images = []
        for i, row in enumerate(model_input.to_dict("records")):
            with tempfile.TemporaryDirectory(prefix="cocosnet-serve-") as folder:
                folder = Path(folder)
                exemplar = folder / "exemplar.img"
                exemplar.write_bytes(_image_bytes(row["exemplar"], f"row {i}, column 'exemplar'"))
                poses = {}
                for column in ("exemplar_pose", "pose"):
                    text = str(row[column])
                    suffix = pose_suffix(text, f"row {i}, column '{column}'")
                    poses[column] = folder / f"{column}{suffix}"
                    poses[column].write_text(text, encoding="utf-8")
                names = {c: row.get(c) if isinstance(row.get(c), str) and row.get(c) else None for c in NAME_COLUMNS}
                result = generate_one(self.model, self.cfg, exemplar, poses["exemplar_pose"], poses["pose"],
                                      exemplar_pose_name=names["exemplar_pose_name"], pose_name=names["pose_name"])
            buffer = io.BytesIO()
            result.image.save(buffer, format="PNG")
            images.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return pd.DataFrame({"image": images})


def request_row(exemplar: Path, exemplar_pose: Path, pose: Path) -> dict[str, str]:
    """One request row from files (what a client sends)."""
    return {"exemplar": base64.b64encode(Path(exemplar).read_bytes()).decode("ascii"),
            "exemplar_pose": Path(exemplar_pose).read_text(encoding="utf-8"),
            "pose": Path(pose).read_text(encoding="utf-8")}


def request_json(rows: list[dict[str, str]]) -> str:
    """The body `mlflow models serve`'s /invocations takes."""
    columns = list(rows[0])
    return json.dumps({"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}})


def decode_image(value: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(value))).convert("RGB")


def log_pyfunc(model_file: Path, *, name: str = "model", registered_name: str | None = None):
    """Log `model_file` as a pyfunc model to the active MLflow run (registered as a new version of
    `registered_name` if given). Returns MLflow's ModelInfo."""
    return mlflow.pyfunc.log_model(name=name, python_model=CoCosNetModel(), artifacts={"model": str(model_file)},
                                   signature=SIGNATURE, code_paths=[str(REPO / "cocosnet")],
                                   pip_requirements=runtime_requirements(), registered_model_name=registered_name)
