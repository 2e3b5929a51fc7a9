"""The command lines ``pyrospn-train`` and ``pyrospn-sample`` (click). They only parse options and hand them
to :class:`~pyro_spn.train.Trainer` or :class:`~pyro_spn.train.sample.SavedRun`.

A bad option value, a missing or corrupt file or missing data print one line ``Error: ...`` on stderr and
exit with code 2; a non-finite loss exits with code 1, and so does a process of a ``torchrun`` job whose peers stopped
(:class:`~pyro_spn.train.distributed.DistributedError`); an interruption exits with code 130.

``pyrospn-train`` runs unchanged under ``torchrun``: it joins the process group the environment describes
(:func:`pyro_spn.train.distributed.start`), and rank 0 alone writes the run folder and prints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
import torch
from click.core import ParameterSource

from ..command import (
    CONTEXT,
    HANDLED,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    Failure,
    OneLineErrors,
    failure,
    interrupted,
)
from ..data import DATASETS, event_shape_of
from ..data.custom import custom_name
from ..estimators import ESTIMATORS
from ..objectives import OBJECTIVES
from ..region_graphs import read_region_graph, region_trees
from ..sampling import INTERPOLATIONS
from ..temperature import KINDS as TEMPERATURES
from . import distributed
from .config import DEVICES, LEAVES, MMD_BANDWIDTHS, MODEL_DEFAULTS, MODELS, OPTIMIZERS, STRUCTURES, TrainConfig
from .sample import SIDES, SavedRun, check_output, write_inpainting, write_samples
from .trainer import Trainer

_DEFAULTS = TrainConfig()
# Options a resumed run accepts; the rest of its config comes from its checkpoint.
_RESUME_OPTIONS = ("resume", "output", "device", "epochs", "progress")
_MODEL_DEFAULTS = ", ".join(f"{model}: {objective}, {lr:g}" for model, (objective, lr) in MODEL_DEFAULTS.items())


@click.command(cls=OneLineErrors, context_settings=CONTEXT)
@click.option("--model", type=click.Choice(MODELS), default=_DEFAULTS.model, show_default=True,
              help="What to train: the circuit (spn) or a neural baseline with as many parameters as that circuit "
                   "would have: vae (objective ll, its ELBO), gan (objective adv) or mmd-gan (objective mmd, learned "
                   "kernel).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
              show_default=f"the model's ({_MODEL_DEFAULTS})",
              help="Training objective: ll (maximum likelihood), adv (adversarial, neural discriminator), mmd "
                   "(maximum mean discrepancy), pae (probabilistic auto-encoding over data and Gaussian latents).")
@click.option("--class-conditional", is_flag=True, default=_DEFAULTS.class_conditional,
              help="A circuit over the data and the class label (objective ll, labelled data sets): a "
                   "class-conditional generator and generative classifier; pictures show a row per class.")
@click.option("--dataset", type=click.Choice(DATASETS), default=_DEFAULTS.dataset, show_default=True,
              help="Data set: a synthetic 2-D set or an image set (digits is bundled and needs no files).")
@click.option("--data-path", default=None, metavar="PATH[#DATASET]",
              help="Your own data instead of --dataset: a folder of PNG/JPEG images (one size; class subfolders give "
                   "labels), an .npy array or an HDF5 file (#DATASET names one of its datasets); split 80/10/10 by "
                   "--seed.")
@click.option("--data-root", default=_DEFAULTS.data_root, type=click.Path(file_okay=False),
              show_default="data, with the HDF5 cache in ~/.cache/pyro_spn/data",
              help="Folder with the torchvision-format data files (and the HDF5 cache of decoded images).")
@click.option("--download/--no-download", default=_DEFAULTS.download, show_default=True,
              help="Download missing data files into --data-root.")
@click.option("--leaf", type=click.Choice(LEAVES), default=_DEFAULTS.leaf, show_default=True,
              help="Leaf type; auto: binomial for images, normal for 2-D data.")
@click.option("--depth", type=POSITIVE_INT, default=None, show_default="auto: min(4, floor(log2 F))",
              help="Circuit depth D (2^D leaf regions per repetition).")
@click.option("--repetitions", "num_repetitions", type=POSITIVE_INT, default=_DEFAULTS.num_repetitions,
              show_default=True, help="Repetitions R (random trees mixed at the root).")
@click.option("--sums", "num_sums", type=POSITIVE_INT, default=_DEFAULTS.num_sums, show_default=True,
              help="Sum units K per region.")
@click.option("--leaves", "num_leaves", type=POSITIVE_INT, default=_DEFAULTS.num_leaves, show_default=True,
              help="Leaf components per leaf region.")
@click.option("--structure", type=click.Choice(STRUCTURES[:3]), default=_DEFAULTS.structure, show_default=True,
              help="Region graph: rat (random binary trees), quad-tree (image quad-trees, shifted per repetition) or "
                   "poon-domingos (random trees drawn from the Poon-Domingos region graph, not its DAG); the last two "
                   "need images and a circuit over the data alone.")
@click.option("--structure-file", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Your own region graph instead of --structure: a JSON list of trees, one per repetition (a node is "
                   "a list of variable indices or {\"children\": [node, ...]}; see pyro_spn.region_graphs); its trees "
                   "are the repetitions.")
@click.option("--pd-delta", type=POSITIVE_INT, default=_DEFAULTS.pd_delta, show_default=True,
              help="Step in pixels of the Poon-Domingos cuts (--structure poon-domingos).")
@click.option("--temperature", type=click.Choice(TEMPERATURES), default=_DEFAULTS.temperature, show_default=True,
              help="Gumbel-Softmax temperature: constant (--tau), annealed (from --tau down to --tau-min at "
                   "--tau-rate) or learned (starting at --tau).")
@click.option("--tau", type=POSITIVE, default=_DEFAULTS.tau, show_default=True,
              help="Constant, starting or initial temperature.")
@click.option("--tau-min", type=POSITIVE, default=_DEFAULTS.tau_min, show_default=True,
              help="Floor of the annealed temperature.")
@click.option("--tau-rate", type=NON_NEGATIVE, default=_DEFAULTS.tau_rate, show_default=True,
              help="Decay rate of the annealed temperature: tau * exp(-rate * epoch / epochs).")
@click.option("--estimator", type=click.Choice(ESTIMATORS), default=_DEFAULTS.estimator, show_default=True,
              help="Gradient through the samples (adv, mmd, pae): soft (the paper's relaxation), straight_through, "
                   "score (exact samples, score function: unbiased) or exact (no sampling: mmd with the fixed kernel, "
                   "pae).")
@click.option("--interpolation", type=click.Choice(INTERPOLATIONS), default=_DEFAULTS.interpolation,
              show_default=True, help="Soft selections per sum unit (the paper's) or per region (K times cheaper).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_DEFAULTS.optimizer, show_default=True,
              help="adam: gradient steps; em: mini-batch EM for the likelihood (objective ll, or the --pretrain-epochs "
                   "of any objective, then Adam).")
@click.option("--em-step-size", type=click.FloatRange(0, 1, min_open=True), default=None,
              show_default="(t + 2)^-0.6", help="A fixed EM step size (1: full EM on each batch).")
@click.option("--lr", type=POSITIVE, default=None, show_default=f"the model's ({_MODEL_DEFAULTS})",
              help="Adam learning rate of the circuit or baseline (and a learned temperature).")
@click.option("--batch-size", type=POSITIVE_INT, default=_DEFAULTS.batch_size, show_default=True,
              help="Examples per mini-batch: the global batch, shared out among the processes of a torchrun job.")
@click.option("--epochs", type=POSITIVE_INT, default=_DEFAULTS.epochs, show_default=True,
              help="Epochs in all (pre-training included); with --resume, more epochs extend the run.")
@click.option("--seed", type=SEED, default=_DEFAULTS.seed, show_default=True,
              help="Seeds the data split, the model, the shuffles and the sampler.")
@click.option("--device", type=click.Choice(DEVICES), default=_DEFAULTS.device, show_default=True,
              help="auto: CUDA if available, else CPU.")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              show_default="runs/OBJECTIVE-DATASET-seedSEED",
              help="Run folder: config.json, metrics.jsonl, samples_epochNNN.png, checkpoint.pt, samples.h5. A folder "
                   "that is not empty is refused without --resume or --overwrite.")
@click.option("--resume", is_flag=True, default=False,
              help="Continue the run in --output from its checkpoint (its saved options are used; only --epochs, "
                   "--device and --progress may be given besides).")
@click.option("--overwrite", is_flag=True, default=_DEFAULTS.overwrite,
              help="Start a new run in --output even if it holds files: the files of a run there are removed first "
                   "(other files stay).")
@click.option("--pretrain-epochs", type=click.IntRange(min=0), default=_DEFAULTS.pretrain_epochs, show_default=True,
              help="First epochs that minimize the negative log-likelihood instead of the objective.")
@click.option("--nll-weight", type=NON_NEGATIVE, default=_DEFAULTS.nll_weight, show_default=True,
              help="Hybrid loss: objective + weight * NLL (0: the objective alone; not for ll).")
@click.option("--discriminator-steps", type=POSITIVE_INT, default=_DEFAULTS.discriminator_steps,
              show_default=True, help="Discriminator (adv) or kernel encoder (mmd) updates per circuit update.")
@click.option("--discriminator-lr", type=POSITIVE, default=_DEFAULTS.discriminator_lr, show_default=True,
              help="Adam learning rate of the discriminator (adv).")
@click.option("--mmd-adversarial/--mmd-fixed", "mmd_adversarial", default=_DEFAULTS.mmd_adversarial,
              show_default=True, help="MMD kernel: learned adversarially by an encoder (MMD-GAN) or fixed RBF "
                                      "kernels on the data.")
@click.option("--mmd-bandwidths", type=click.Choice(MMD_BANDWIDTHS), default=_DEFAULTS.mmd_bandwidths,
              show_default=True, help="RBF bandwidths of the MMD: 1..16 on the scaled data (fixed), or 1/8..2 times "
                                      "the training data's median pairwise distance (data).")
@click.option("--encoder-lr", type=POSITIVE, default=_DEFAULTS.encoder_lr, show_default=True,
              help="Adam learning rate of the MMD kernel encoder.")
@click.option("--latent-dim", type=POSITIVE_INT, default=_DEFAULTS.latent_dim, show_default=True,
              help="Gaussian latent variables of the pae objective and of the baselines.")
@click.option("--num-final-samples", type=POSITIVE_INT, default=_DEFAULTS.num_final_samples, show_default=True,
              help="Samples written to samples.h5 at the end (at most 2^28 values in all: 4194304 8x8 digits).")
@click.option("--max-batches-per-epoch", type=POSITIVE_INT, default=None, show_default="all",
              help="Cut every epoch (and validation) to this many batches, for smoke tests.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar (shown only on a terminal).")
@click.pass_context
def train(ctx: click.Context, resume: bool, progress: bool, **options: Any) -> None:
    """Train a sum-product network with differentiable sampling (or a neural baseline) and write a run folder.

    \b
    The run folder (--output) holds:
      config.json             every option of the run
      metrics.jsonl           one JSON line per epoch (train_loss, val_nll, temperature, seconds, ...)
      samples_epochNNN.png    samples (images) or the density with samples and data (2-D sets)
      checkpoint.pt           the state after the last finished epoch (continue it with --resume)
      samples.h5              --num-final-samples samples at the end

    \b
    Examples:
      pyrospn-train                                    # maximum likelihood on the bundled 8x8 digits
      pyrospn-train --objective adv --dataset mnist --download --epochs 30 --output runs/adv-mnist
      pyrospn-train --model gan --dataset mnist --epochs 30 --output runs/gan-mnist   # the DCGAN baseline
      pyrospn-train --output runs/adv-mnist --resume   # continue after an interruption
      pyrospn-train --optimizer em --epochs 10         # maximum likelihood by mini-batch EM
      pyrospn-train --data-path my_images/ --output runs/mine      # your own data (images, .npy or HDF5)
      torchrun --nproc_per_node 4 $(which pyrospn-train) --objective adv --dataset mnist --output runs/adv-mnist
    """
    try:
        world = distributed.start()
        if resume:
            given = [name for name in ctx.params if name not in _RESUME_OPTIONS
                     and ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
            if given:
                raise click.UsageError(f"--resume takes its options from the checkpoint; remove "
                                       f"{', '.join(_option_name(ctx, name) for name in given)}")
            if options["output"] is None:
                raise click.UsageError("--resume needs --output RUN_DIR")
            given_epochs = ctx.get_parameter_source("epochs") is not ParameterSource.DEFAULT
            given_device = ctx.get_parameter_source("device") is not ParameterSource.DEFAULT
            trainer = Trainer.resume(options["output"], device=options["device"] if given_device else None,
                                     epochs=options["epochs"] if given_epochs else None, progress=progress,
                                     world=world)
        else:
            data_path = options.pop("data_path")
            if data_path is not None:
                if ctx.get_parameter_source("dataset") is not ParameterSource.DEFAULT:
                    raise click.UsageError("--data-path and --dataset exclude each other")
                options["dataset"] = custom_name(data_path)
            structure_file = options.pop("structure_file")
            if structure_file is not None:
                _read_structure_file(ctx, structure_file, options)
            trainer = Trainer(TrainConfig(**options), progress=progress, world=world)
        trainer.fit()
        distributed.stop(world)
    except distributed.DistributedError as error:
        raise Failure(str(error), exit_code=1) from None
    except HANDLED as error:
        raise failure(error) from None
    except KeyboardInterrupt:
        raise interrupted("continue from the last finished epoch with --resume") from None
    if world.is_main:
        click.echo(f"run written to {trainer.run_dir}")


def _read_structure_file(ctx: click.Context, path: str, options: dict[str, Any]) -> None:
    """Puts the user's region graph in ``path`` into ``options`` (structure ``user``, its trees as ``region_graph``
    and their number as ``num_repetitions``), after checking it against the data's variables (errors name the
    file)."""
    for name in ("structure", "num_repetitions"):
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
            raise click.UsageError(f"--structure-file and {_option_name(ctx, name)} exclude each other (the file's "
                                   f"trees are the structure and the repetitions)")
    trees = read_region_graph(path)
    shape = event_shape_of(options["dataset"])
    try:
        region_trees(trees, math.prod(shape[1:] if len(shape) == 3 else shape), options["depth"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"--structure-file {path}: {error}") from None
    options.update(structure="user", region_graph=trees, num_repetitions=len(trees))


def _option_name(ctx: click.Context, name: str) -> str:
    option = next(p for p in ctx.command.params if p.name == name)
    return option.opts[0]


@click.command(cls=OneLineErrors, context_settings=CONTEXT)
@click.option("--checkpoint", "run", required=True, type=click.Path(path_type=Path),
              help="A run folder (or its checkpoint.pt).")
@click.option("--num-samples", type=POSITIVE_INT, default=64, show_default=True,
              help="Samples to draw (a picture of images shows the first 1024), or test images to complete with "
                   "--inpaint; at most 2^28 values in all.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              show_default="RUN/sample.png or RUN/inpaint_SIDE.png",
              help="The picture (.png): a grid of samples (2-D data: the density with the samples), or with "
                   "--inpaint rows of originals, masked images, conditional samples and max-product completions. "
                   "An existing file is replaced only if this command wrote it.")
@click.option("--inpaint", type=click.Choice(SIDES), default=None,
              help="Complete test images whose given half is missing instead of sampling unconditionally.")
@click.option("--hdf5", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the samples (or completions), in data units, to this HDF5 file (never a file of a "
                   "training run; an existing file only if this command wrote it).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, show_default="the run's",
              help="Folder with the data files, for the test images of --inpaint.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds the sampler.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto: CUDA if available, else CPU.")
def sample(run: Path, num_samples: int, output: Path | None, inpaint: str | None, hdf5: Path | None,
           data_root: str | None, seed: int, device: str) -> None:
    """Draw samples from a trained run, or complete half-masked test images (inpainting).

    \b
    Examples:
      pyrospn-sample --checkpoint runs/adv-mnist --num-samples 100 --hdf5 samples.h5
      pyrospn-sample --checkpoint runs/adv-mnist --inpaint left --output inpainting.png
    """
    folder = run.parent if run.is_file() else run
    picture = output or folder / ("sample.png" if inpaint is None else f"inpaint_{inpaint}.png")
    try:
        check_output(picture, "--output", "picture")
        if hdf5 is not None:
            check_output(hdf5, "--hdf5", "hdf5")
            if hdf5.resolve() == picture.resolve():
                raise click.UsageError(f"--hdf5 and --output name the same file {hdf5}")
        saved = SavedRun.load(run, device)
        torch.manual_seed(seed)
        if inpaint is None:
            write_samples(saved, num_samples, picture, hdf5)
        else:
            write_inpainting(saved, inpaint, num_samples, picture, hdf5, data_root)
    except HANDLED as error:
        raise failure(error) from None
    click.echo(f"picture written to {picture}" + ("" if hdf5 is None else f", samples to {hdf5}"))
