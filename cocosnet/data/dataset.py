"""A torch Dataset over the pair table, with the official augmentations.

Each sample: the target image and its label share one random crop of the
load_size cache; the exemplar and its label get their own, independent crop;
an optional horizontal flip. Augmentation draws come from a generator seeded
by (seed, epoch, index) (the sampler passes (index, epoch) keys), so a sample is the same whichever worker or rank
loads it, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cocosnet.data.processing import image_file, label_file, load_cached_image, load_label
from cocosnet.metrics.correspondence import gt_in_crop


@dataclass(frozen=True)
class Crop:
    top: int
    left: int
    flip: bool


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class PairDataset(Dataset):
    """Rows of a pair table -> dict of tensors.

    label, exemplar_label (20, S, S) in [0, 1]; image, exemplar (3, S, S) in
    [-1, 1]; self_ref () float (1 for a self pair); index; and the crop
    offsets (for mapping ground truth into the crop). With `truth_root` (a synthetic set's raw folder)
    also the true matches: truth (S, S, 2) exemplar-crop (x, y) of every target pixel, truth_valid (S, S).
    """

    def __init__(self, table: pd.DataFrame, processed: Path, *, load_size: int, crop_size: int,
                 random_crop: bool, flip: bool = False, seed: int = 0, truth_root: Path | None = None):
        if flip and truth_root is not None:
            raise ValueError("true matches are not flipped: use flip=False with truth_root")
        self.truth_root = truth_root
        self.table = table.reset_index(drop=True)
        self.img_dir, self.label_dir = Path(processed) / "img", Path(processed) / "label"
        self.load_size, self.crop_size = load_size, crop_size
        self.random_crop, self.flip, self.seed = random_crop, flip, seed

    def __len__(self) -> int:
        return len(self.table)

    def _crop(self, rng: np.random.Generator) -> Crop:
        room = self.load_size - self.crop_size
        if self.random_crop:
            top, left = (int(v) for v in rng.integers(0, room + 1, size=2))
        else:
            top = left = room // 2
        return Crop(top, left, bool(self.flip and rng.random() < 0.5))

    def _load(self, rel: str, crop: Crop) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_cached_image(image_file(self.img_dir, rel))
        label = load_label(label_file(self.label_dir, rel))
        s = self.crop_size
        image = image[crop.top:crop.top + s, crop.left:crop.left + s]
        label = label[crop.top:crop.top + s, crop.left:crop.left + s]
        if crop.flip:
            image, label = image[:, ::-1], label[:, ::-1]
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1
        label_t = torch.from_numpy(np.ascontiguousarray(label)).permute(2, 0, 1).float() / 255
        return image_t, label_t

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """key: an index, or (index, epoch) so that each epoch draws new crops."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        row = self.table.iloc[index]
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
        target_crop, exemplar_crop = self._crop(rng), self._crop(rng)
        image, label = self._load(row["target"], target_crop)
        exemplar, exemplar_label = self._load(row["exemplar"], exemplar_crop)
        item = {"image": image, "label": label, "exemplar": exemplar, "exemplar_label": exemplar_label,
                "self_ref": torch.tensor(float(row["kind"] == "self")), "index": torch.tensor(index),
                "target_crop": torch.tensor([target_crop.left, target_crop.top]),
                "exemplar_crop": torch.tensor([exemplar_crop.left, exemplar_crop.top])}
        if self.truth_root is not None:
            truth, valid = gt_in_crop(self.truth_root, row["target"], row["exemplar"], load_size=self.load_size,
                                      crop=self.crop_size, target_offset=(target_crop.left, target_crop.top),
                                      exemplar_offset=(exemplar_crop.left, exemplar_crop.top))
            item["truth"], item["truth_valid"] = torch.from_numpy(truth), torch.from_numpy(valid)
        return item
