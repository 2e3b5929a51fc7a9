"""The command line ``pyrospn-experiment`` (click): parses options into an :class:`ExperimentConfig` and runs it.

A bad option prints one line ``Error: ...`` and exits with code 2; an interruption exits with code 130 (rerun
the same command to continue); a rank of a ``torchrun`` job whose peers stopped exits with code 1.

Under ``torchrun`` every rank is a worker of the experiment (:class:`~pyro_spn.experiment.protocol.Experiment`); the
ranks wait for each other between the phases for up to :data:`EXPERIMENT_TIMEOUT` (or ``PYRO_SPN_DIST_TIMEOUT``
seconds).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from ..command import CONTEXT, HANDLED, NON_NEGATIVE, POSITIVE_INT, Failure, OneLineErrors, failure, interrupted
from ..train import distributed
from .config import FEATURES, ExperimentConfig
from .methods import METHODS
from .protocol import Experiment

_DEFAULTS = ExperimentConfig(output="")
#: How long a rank waits for the others at the end of a phase (they may still be training their runs).
EXPERIMENT_TIMEOUT = timedelta(days=7)


def _split(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _numbers(name: str, text: str, kind: type) -> tuple:
    try:
        return tuple(kind(item) for item in _split(text))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {kind.__name__}s, got {text!r}", param_hint=name) from None


@click.command(cls=OneLineErrors, context_settings=CONTEXT)
@click.option("--output", required=True, type=click.Path(file_okay=False),
              help="Experiment folder (rerun the same command to continue an interrupted experiment).")
@click.option("--datasets", default=",".join(_DEFAULTS.datasets), show_default=True,
              help="Comma-separated data sets, e.g. digits,2-moons,9-clusters.")
@click.option("--methods", default=",".join(_DEFAULTS.methods), show_default=True,
              help=f"Comma-separated methods: {', '.join(METHODS)}.")
@click.option("--lrs", default=",".join(f"{lr:g}" for lr in _DEFAULTS.lrs), show_default=True,
              help="Comma-separated learning rates of the grid.")
@click.option("--batch-sizes", default=",".join(map(str, _DEFAULTS.batch_sizes)), show_default=True,
              help="Comma-separated batch sizes of the grid.")
@click.option("--seeds", type=POSITIVE_INT, default=_DEFAULTS.seeds, show_default=True,
              help="Seeds of the test phase (the grid uses seed 0).")
@click.option("--epochs", type=POSITIVE_INT, default=_DEFAULTS.epochs, show_default=True, help="Epochs per run.")
@click.option("--nll-weight", type=NON_NEGATIVE, default=_DEFAULTS.nll_weight, show_default=True,
              help="λ of the '+nll' hybrid methods.")
@click.option("--num-samples", type=POSITIVE_INT, default=_DEFAULTS.num_samples, show_default=True,
              help="Samples drawn per evaluation.")
@click.option("--features", type=click.Choice(FEATURES), default=_DEFAULTS.features, show_default=True,
              help="FID / KID features: a classifier trained on the data set (offline) or Inception-v3.")
@click.option("--classifier-epochs", type=POSITIVE_INT, default=_DEFAULTS.classifier_epochs, show_default=True,
              help="Training epochs of the evaluation's classifiers (FID features, classifier on samples).")
@click.option("--inception-weights", type=click.Path(dir_okay=False), default=None,
              help="Local Inception-v3 weights file (torch-fidelity's) for --features inception.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              show_default="data, with the HDF5 cache in ~/.cache/pyro_spn/data",
              help="Folder with the torchvision-format data files (and the HDF5 cache of decoded images).")
@click.option("--depth", type=POSITIVE_INT, default=None, show_default="auto", help="Circuit depth D.")
@click.option("--repetitions", "num_repetitions", type=POSITIVE_INT, default=None, show_default="10",
              help="Repetitions R.")
@click.option("--sums", "num_sums", type=POSITIVE_INT, default=None, show_default="20", help="Sum units K per region.")
@click.option("--leaves", "num_leaves", type=POSITIVE_INT, default=None, show_default="20",
              help="Leaf components per leaf region.")
@click.option("--max-batches-per-epoch", type=POSITIVE_INT, default=None, show_default="all",
              help="Cut every epoch to this many batches (smoke tests).")
@click.option("--jobs", type=POSITIVE_INT, default=_DEFAULTS.jobs, show_default=True,
              help="Runs trained at once, each in its own process (the threads are shared out).")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True,
              help="Device of every run.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar over runs.")
def experiment(output: str, datasets: str, methods: str, lrs: str, batch_sizes: str, data_root: str | None, device: str,
               **options: Any) -> None:
    """Run the paper's protocol: a grid search over learning rates x batch sizes on the validation split, then the
    selected setting of every data set and method over several seeds on the test split.

    \b
    Writes into --output: runs/ (every run folder), results.csv, summary.md (mean ± std tables), samples.png
    (methods x image data sets) and densities.png (2-D data sets x methods).

    \b
    Examples:
      pyrospn-experiment --output runs/protocol --datasets digits --methods ll,adv,vae --jobs 2
      pyrospn-experiment --output runs/2d --datasets 2-moons,9-clusters --methods ll,adv,mmd,gan --seeds 5
      torchrun --nproc_per_node 8 $(which pyrospn-experiment) --output runs/protocol --datasets digits
    """
    circuit = {name: options.pop(name) for name in ("depth", "num_repetitions", "num_sums", "num_leaves",
                                                     "max_batches_per_epoch")}
    given = {"data_root": data_root, **circuit}
    train = {"device": device, **{k: v for k, v in given.items() if v is not None}}
    try:
        world = distributed.start(distributed.timeout_from_environment(EXPERIMENT_TIMEOUT))
        config = ExperimentConfig(output=output, datasets=_split(datasets), methods=_split(methods),
                                  lrs=_numbers("--lrs", lrs, float),
                                  batch_sizes=_numbers("--batch-sizes", batch_sizes, int), train=train, **options)
        Experiment(config, world).run()
        distributed.stop(world)
    except distributed.DistributedError as error:
        raise Failure(str(error), exit_code=1) from None
    except HANDLED as error:
        raise failure(error) from None
    except KeyboardInterrupt:
        raise interrupted("rerun the same command to continue") from None
    if world.is_main:
        click.echo(f"results written to {output}/summary.md and {output}/results.csv")
