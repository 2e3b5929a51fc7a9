"""The protocol's class-conditional runs (method ``ll-class``): a circuit over the data and the class label
(:class:`~pyro_spn.class_conditional.ClassConditionalSPN`), trained by maximum likelihood of the joint, and
evaluated like every other run plus the classifier-on-samples accuracy (paper §4.2 "Metrics").

Run folder: ``class_conditional.pt`` (the trained circuit's state dict), ``metrics.jsonl`` (one line per epoch:
``train_nll`` of the joint, ``seconds``), ``samples_epochNNN.png`` (row ``v`` of the square grid: samples of
class ``v``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..class_conditional import ClassConditionalSPN, fit_class_conditional
from ..data import Dataset, load_dataset
from ..metrics import classifier_on_samples
from ..train import TrainConfig
from ..train.model import DataInfo, make_leaf, resolve_device, spn_options
from ..train.pictures import save_image_grid
from .evaluation import METRICS, image_metrics

STATE_FILE = "class_conditional.pt"


def _data(config: TrainConfig) -> Dataset:
    data = load_dataset(config.dataset, leaf=config.leaf, root=config.data_root, seed=config.seed)
    if not data.is_image or data.train_labels is None:
        raise ValueError(f"methods: ll-class needs a labelled image data set; {config.dataset!r} is not one")
    return data


def _build(config: TrainConfig, data: Dataset) -> ClassConditionalSPN:
    """The run's circuit, on the run's device."""
    model = ClassConditionalSPN(data.event_shape, int(data.train_labels.max()) + 1,
                                make_leaf(data.leaf, data.total_count), **spn_options(config, DataInfo.of(data)))
    return model.to(resolve_device(config.device))


def train_class_conditional(config: TrainConfig) -> None:
    """Trains the class-conditional circuit of ``config`` (its dataset, circuit, lr, batch size, epochs, seed)
    and writes its run folder ``config.output``."""
    folder = Path(config.output)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.to_json() + "\n")
    data = _data(config)
    torch.manual_seed(config.seed)
    model = _build(config, data)
    start = time.perf_counter()
    history = fit_class_conditional(model, data.train, data.train_labels, epochs=config.epochs, lr=config.lr,
                                    batch_size=config.batch_size, seed=config.seed)
    seconds = (time.perf_counter() - start) / config.epochs
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": epoch, "train_nll": nll, "seconds": seconds}) + "\n"
        for epoch, nll in enumerate(history, start=1)))
    with torch.no_grad():
        labels = torch.arange(model.num_classes).repeat_interleave(model.num_classes)  # a square grid, a row a class
        picture = folder / f"samples_epoch{config.epochs:03d}.png"
        save_image_grid(data.preprocessing.inverse(model.sample(labels).cpu()), picture)
    temp = folder / (STATE_FILE + ".tmp")
    torch.save(model.state_dict(), temp)
    os.replace(temp, folder / STATE_FILE)


def is_trained(folder: Path) -> bool:
    """Whether the class-conditional run in ``folder`` has finished training."""
    return (folder / STATE_FILE).is_file()


def evaluate_class_conditional(config: TrainConfig, split: str, *, features: nn.Module, num_samples: int,
                               epochs: int = 15, seed: int = 0) -> dict[str, Any]:
    """The metrics of :func:`~pyro_spn.experiment.evaluation.evaluate_run` for the class-conditional run of
    ``config`` on ``split`` (samples drawn from the joint, the class marginalized for the likelihood), plus
    ``accuracy``: the classifier-on-samples accuracy on the split's real images (its classifier trained for
    ``epochs`` epochs)."""
    folder = Path(config.output)
    data = _data(config)
    model = _build(config, data)
    model.load_state_dict(torch.load(folder / STATE_FILE, weights_only=True, map_location=model.spn.root.logits.device))
    model.eval()
    x, labels = getattr(data, split), getattr(data, f"{split}_labels")
    torch.manual_seed(seed)
    with torch.no_grad():
        samples = torch.cat([model.sample_joint(min(config.batch_size, num_samples - start))[0].cpu()
                             for start in range(0, num_samples, config.batch_size)])
        log_likelihood = model.log_prob_x(x).double().cpu()
        result: dict[str, Any] = {**dict.fromkeys(METRICS), "nll": -float(log_likelihood.mean())}
        image_metrics(result, data, x, samples, log_likelihood, None, features)

    @torch.no_grad()
    def generate(asked: Tensor) -> Tensor:
        return data.preprocessing.inverse(model.sample(asked).cpu()).clamp(0, 1)

    accuracy = classifier_on_samples(generate, data.preprocessing.inverse(x), labels, num_classes=model.num_classes,
                                     epochs=epochs, seed=seed)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    result.update(accuracy=accuracy.accuracy, num_parameters=sum(p.numel() for p in model.parameters()),
                  epochs=len(records), train_seconds=sum(r["seconds"] for r in records))
    return result

