"""Using a finished (or running) run: load its checkpoint, draw samples, complete half-masked test images.

What ``pyrospn-sample`` writes names it (:data:`SOFTWARE`); it replaces an existing file only if it wrote that file
itself, and never a file of a training run (:func:`check_output`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .. import checks
from ..data import Preprocessing, load_dataset
from ..distribution import SPNDistribution
from ..joint import MarginalSPNDistribution
from .checkpoint import checkpoint_content, checkpoint_path, load_checkpoint
from .config import TrainConfig
from .model import DataInfo, Model, resolve_device
from .pictures import picture_software, save_inpainting_picture
from .records import hdf5_software, write_hdf5
from .run_folder import is_run_file

SIDES: tuple[str, ...] = ("top", "bottom", "left", "right")
#: What the files ``pyrospn-sample`` writes say wrote them.
SOFTWARE = "pyrospn-sample"
#: The most samples a picture of images shows (the first ones; an HDF5 file holds them all).
MAX_PICTURE_IMAGES = 1024
_KEYS = ("config", "epoch", "spn", "temperature", "preprocessing", "data")


@dataclass
class SavedRun:
    """A run's model restored from its checkpoint, with what is needed to map samples back to data units."""

    config: TrainConfig
    model: Model
    preprocessing: Preprocessing
    epoch: int

    @classmethod
    def load(cls, run: str | os.PathLike, device: str = "auto") -> SavedRun:
        """Restores the circuit (or baseline) and temperature of the checkpoint ``run`` (a run folder or the file
        itself).

        Raises:
            FileNotFoundError: no checkpoint there.
            CheckpointError: the file is unreadable or not a checkpoint of this package.
        """
        path = checkpoint_path(run)
        state = load_checkpoint(path, _KEYS)
        with checkpoint_content(path):
            config = TrainConfig.from_json(state["config"]).validate()
            model = Model.build(config, DataInfo.from_state_dict(state["data"]))
            model.network.load_state_dict(state["spn"])
            model.temperature.load_state_dict(state["temperature"])
            preprocessing = Preprocessing.from_state_dict(state["preprocessing"])
            epoch = checks.integer("epoch", state["epoch"], minimum=1, maximum=config.epochs)
        return cls(config, model.to(resolve_device(device)), preprocessing, epoch)

    @property
    def info(self) -> DataInfo:
        return self.model.info

    def write_picture(self, path: Path, num_samples: int) -> Tensor:
        """Draws ``num_samples`` samples (at most :data:`~pyro_spn.checks.MAX_SAMPLE_VALUES` values in all) and writes
        a picture of them (images: of the first :data:`MAX_PICTURE_IMAGES`; 2-D data: the density with them);
        returns them in data units ``[num_samples, *event_shape]``."""
        checks.sample_count("num_samples", num_samples, math.prod(self.info.event_shape))
        samples = self.model.sample(num_samples, self.config.batch_size)
        shown = samples[:MAX_PICTURE_IMAGES] if self.info.is_image else samples
        self.model.save_picture(path, self.preprocessing, self.config.batch_size, samples=shown, software=SOFTWARE)
        return self.preprocessing.inverse(samples)

    def test_images(self, num_images: int, data_root: str | os.PathLike | None = None) -> Tensor:
        """The first ``num_images`` test images of the run's data set, in model space, read from ``data_root``
        (default: the run's).

        Raises:
            ValueError: the run's data are not images, or its model is a baseline (no conditionals to inpaint with).
            DatasetNotFoundError: the data files are missing from the run's ``data_root``.
        """
        self._check_inpainting()
        if not self.info.is_image:
            raise ValueError(f"inpainting needs an image data set; {self.info.name!r} is 2-D")
        checks.sample_count("num_images", num_images, math.prod(self.info.event_shape))
        root = self.config.data_root if data_root is None else data_root
        data = load_dataset(self.info.name, leaf=self.info.leaf.name, root=root, seed=self.config.seed,
                            num_samples=max(num_images, 10))
        return data.test[:num_images]

    @torch.no_grad()
    def inpaint(self, images: Tensor, side: str) -> dict[str, Tensor]:
        """Completes ``images [N, C, H, W]`` (model space) with half ``side`` missing.

        Returns:
            In data units (``[0, 1]``): ``"original"``, ``"sample"`` (an exact conditional sample) and ``"mpe"``
            (the max-product completion), each ``[N, C, H, W]``, and the boolean mask ``"missing"``.
        """
        self._check_inpainting()
        missing = half_mask(images.shape, side)
        evidence = torch.where(missing, torch.full_like(images, float("nan")), images).to(self.model.device)
        d = self.model.data_distribution(hard=True)
        assert isinstance(d, SPNDistribution | MarginalSPNDistribution)
        sample, mpe = _complete(d, evidence)
        inverse = self.preprocessing.inverse
        return {"original": inverse(images), "sample": inverse(sample.cpu()), "mpe": inverse(mpe.cpu()),
                "missing": missing}

    def _check_inpainting(self) -> None:
        if self.model.kind != "spn":
            raise ValueError(f"inpainting needs a circuit's exact conditionals; model {self.model.kind!r} is a "
                             f"baseline without them (sample it without --inpaint)")


def half_mask(shape: torch.Size, side: str) -> Tensor:
    """A boolean mask of ``shape`` ``[N, C, H, W]`` that is ``True`` on half ``side`` of every image."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")
    height, width = shape[-2:]
    rows, columns = torch.arange(height)[:, None], torch.arange(width)[None, :]
    half = {"top": rows < height // 2, "bottom": rows >= height // 2,
            "left": columns < width // 2, "right": columns >= width // 2}[side]
    return half.expand(shape)


def _complete(d: SPNDistribution | MarginalSPNDistribution, evidence: Tensor) -> tuple[Tensor, Tensor]:
    """An exact conditional sample and the max-product completion of the NaN entries of data-shaped ``evidence``
    (for a joint circuit through the joint over data and extras, the extras missing)."""
    if isinstance(d, MarginalSPNDistribution):
        joint = d.circuit.join(evidence, None, x_name="evidence")
        return d.circuit.split(d.joint.condition(joint).sample())[0], d.circuit.split(d.joint.mpe(joint))[0]
    return d.condition(evidence).sample(), d.mpe(evidence)


def check_output(path: Path, name: str, kind: str) -> None:
    """Raises ``ValueError`` naming the option ``name`` if ``pyrospn-sample`` may not write its ``kind`` of file
    (``"picture"``, a PNG, or ``"hdf5"``) to ``path``: a picture not named ``*.png``, a folder, a file of a
    training run, or an existing file this command did not write."""
    if kind == "picture" and path.suffix.lower() != ".png":
        raise ValueError(f"{name} must name a .png file, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"{name}: {path} is a folder, not a file")
    if is_run_file(path):
        raise ValueError(f"{name}: {path} is a file of the training run in {path.parent}; choose another path")
    written_by = picture_software if kind == "picture" else hdf5_software
    if (path.exists() or path.is_symlink()) and written_by(path) != SOFTWARE:
        raise ValueError(f"{name}: {path} exists and was not written by {SOFTWARE}; choose another path (or remove "
                         f"the file)")


def write_inpainting(saved: SavedRun, side: str, num_images: int, picture: Path, hdf5: Path | None,
                     data_root: str | os.PathLike | None = None) -> None:
    """Completes the first ``num_images`` test images (from ``data_root``, default the run's) with half ``side``
    missing: a picture (rows: original, masked, sample, max-product completion) and optionally an HDF5 file with
    the same arrays."""
    result = saved.inpaint(saved.test_images(num_images, data_root), side)
    save_inpainting_picture(result["original"], result["missing"], result["sample"], result["mpe"], picture,
                            software=SOFTWARE)
    if hdf5 is not None:
        write_hdf5(hdf5, {**result, "missing": result["missing"].to(torch.uint8)}, _attrs(saved, inpaint=side),
                   SOFTWARE)


def write_samples(saved: SavedRun, num_samples: int, picture: Path, hdf5: Path | None) -> None:
    """Draws ``num_samples`` samples: a picture and optionally an HDF5 file ("samples", in data units)."""
    samples = saved.write_picture(picture, num_samples)
    if hdf5 is not None:
        write_hdf5(hdf5, {"samples": samples}, _attrs(saved), SOFTWARE)


def _attrs(saved: SavedRun, **extra: str) -> dict[str, object]:
    return {"objective": saved.config.objective, "dataset": saved.config.dataset, "epoch": saved.epoch, **extra}
