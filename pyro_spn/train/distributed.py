"""Training over several processes with ``torch.distributed`` (launched by ``torchrun``): the process group, the
shards of a batch, gradient averaging for every optimizer, and rank 0's decisions shared with the other ranks.

A run under ``torchrun`` finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its
environment; :func:`start` joins the process group they describe (gloo for CPU tensors, NCCL for CUDA tensors where
CUDA is available) and returns the process's :class:`World`. Without them (or with one process) the world is
:data:`SINGLE` and nothing here communicates.

Synchronization does not depend on how a loss reaches the parameters (``forward``, ``rsample``, a score function):
:class:`GradientSync` hooks every optimizer's ``step`` and sums each parameter's gradient, weighted by the rank's
share of the global batch, over the ranks first (one flattened bucket per dtype and device), so every rank takes the
same step from the same parameters (:func:`broadcast_state` makes them equal at the start).

A collective that fails (another process died, or did not answer within the process group's timeout) raises a
:class:`DistributedError` with a one-line message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

_T = TypeVar("_T")

#: The environment variable that sets the process group's timeout in seconds (how long a rank waits for the others
#: in one collective before it gives up).
TIMEOUT_VARIABLE = "PYRO_SPN_DIST_TIMEOUT"
#: The default timeout of a training run's collectives (rank 0 writes pictures and checkpoints meanwhile).
DEFAULT_TIMEOUT = timedelta(minutes=10)
#: The variables torchrun sets that :func:`world_from_environment` reads.
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: Errors rank 0 may report to the other ranks by :func:`decide_on_main` (raised there as the same type).
SHARED_ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError,
                                             "TypeError": TypeError, "OSError": OSError}


class DistributedError(RuntimeError):
    """A collective failed: another process stopped, or did not answer within the timeout."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run.

    Attributes:
        rank: this process's number, ``0 <= rank < size`` (rank 0 writes the run folder).
        size: the number of processes.
        local_rank: its number on its machine (its GPU).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there are other processes to synchronize with."""
        return self.size > 1

    def shard(self, index: Tensor) -> Tensor:
        """This rank's contiguous share of a batch ``index [B]``: ``[B_r]``, the sizes ``B_r`` differing by at most
        one and summing to ``B`` over the ranks (rank order is batch order).

        Raises:
            ValueError: ``B`` is smaller than the number of processes (a rank would get no examples).
        """
        if index.shape[0] < self.size:
            raise ValueError(f"batch_size: a batch of {index.shape[0]} examples cannot be shared by {self.size} "
                             f"processes; use --batch-size >= {self.size} (it is the global batch)")
        return index.tensor_split(self.size)[self.rank]

    def seed(self, seed: int, epoch: int) -> int:
        """The seed of this rank's random generators in epoch ``epoch`` (0-based) of a run seeded ``seed``: a pure
        function of the three, different for every rank."""
        return (seed * 1_000_003 + epoch * 10_007 + self.rank * 7_919 + 1) % 2**63


SINGLE = World()


def world_from_environment(environ: dict[str, str] | None = None) -> World | None:
    """The :class:`World` that torchrun's variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` describe; ``None`` if
    they are not set.

    Raises:
        ValueError: a variable is set but not a valid number, or the ranks do not fit the world size.
    """
    environ = dict(os.environ) if environ is None else environ
    if not any(name in environ for name in ENVIRONMENT):
        return None
    values = {}
    for name in ENVIRONMENT:
        text = environ.get(name, "0" if name == "LOCAL_RANK" else "")
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"{name}: torchrun's environment variable must be an integer, got {text!r}") from None
    world = World(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if world.size < 1 or not 0 <= world.rank < world.size or world.local_rank < 0:
        raise ValueError(f"RANK, WORLD_SIZE: rank {world.rank} of {world.size} processes is not a valid place")
    return world


def timeout_from_environment(default: timedelta = DEFAULT_TIMEOUT) -> timedelta:
    """The collectives' timeout: :data:`TIMEOUT_VARIABLE` seconds if set, else ``default``."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds, got {text!r}")
    return timedelta(seconds=seconds)


def start(timeout: timedelta | None = None) -> World:
    """Joins the process group torchrun's environment describes (``env://`` rendezvous) and returns this process's
    world; :data:`SINGLE` without torchrun or for one process. CUDA processes use the GPU ``LOCAL_RANK``.

    Args:
        timeout: how long a collective waits for the other ranks; default :func:`timeout_from_environment`.

    Raises:
        ValueError: malformed torchrun variables or timeout.
        DistributedError: the rendezvous failed.
    """
    world = world_from_environment()
    if world is None or not world.distributed:
        return SINGLE
    timeout = timeout_from_environment() if timeout is None else timeout
    if dist.is_initialized():
        return world
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    with collective(world, "joining the process group"):
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
    return world


def stop(world: World) -> None:
    """Leaves the process group after the ranks meet a last time (all ranks call it when they have finished)."""
    if world.distributed and dist.is_initialized():
        barrier(world, "finishing")
        dist.destroy_process_group()


@contextmanager
def collective(world: World, what: str) -> Iterator[None]:
    """Turns the failure of a collective during ``what`` into a :class:`DistributedError` with one line naming this
    rank and what to do."""
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, ValueError, OSError) as error:  # DistBackendError is a RuntimeError
        reason = " ".join(str(error).split())[:200]
        raise DistributedError(f"rank {world.rank} of {world.size}: {what} failed, another process stopped or did "
                               f"not answer ({type(error).__name__}: {reason}); rerun with --resume to continue "
                               f"from the last checkpoint") from None


def barrier(world: World, what: str) -> None:
    """Waits until every rank gets here (nothing for one process)."""
    if world.distributed:
        with collective(world, what):
            dist.barrier()


def all_sum(world: World, values: Sequence[float], what: str) -> list[float]:
    """The sums over the ranks of ``values`` (float64; the same on every rank)."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    with collective(world, what):
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_sum(world: World, tensor: Tensor, what: str) -> Tensor:
    """The sum over the ranks of ``tensor`` (a new tensor, the same on every rank; ``tensor`` itself alone)."""
    if not world.distributed:
        return tensor
    total = tensor.clone()
    with collective(world, what):
        dist.all_reduce(total)
    return total


def decide_on_main(world: World, decide: Callable[[], _T]) -> _T:
    """``decide()`` run on rank 0 alone, its result (or the ``ValueError``, ``FileNotFoundError``, ``TypeError`` or
    ``OSError`` it raised, with its message) handed to every rank, so that all ranks go on, or stop, alike.

    Use it for what only one process may do or read: checks of the run folder, the checkpoint read on resume (the
    other ranks need not see rank 0's files), writing shared files.
    """
    if not world.distributed:
        return decide()
    message: list[Any] = [None]
    original: Exception | None = None
    if world.is_main:
        try:
            message[0] = ("ok", decide())
        except tuple(SHARED_ERRORS.values()) as error:
            original = error
            kind = next(name for name, error_type in SHARED_ERRORS.items() if isinstance(error, error_type))
            message[0] = ("error", (kind, str(error)))
    with collective(world, "sharing rank 0's decision"):
        dist.broadcast_object_list(message, src=0)
    status, value = message[0]
    if status == "ok":
        return value
    if original is not None:
        raise original
    kind, text = value
    raise SHARED_ERRORS[kind](text)


def _buckets(tensors: Iterable[Tensor]) -> dict[tuple[torch.dtype, torch.device], list[Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    return groups


@torch.no_grad()
def broadcast_state(world: World, modules: Sequence[nn.Module]) -> None:
    """Copies rank 0's parameters and buffers of ``modules`` to every rank (one flattened broadcast per dtype and
    device), so all replicas start equal."""
    if not world.distributed:
        return
    tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())]
    for group in _buckets(t for t in tensors if t.numel() > 0).values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        with collective(world, "broadcasting the model"):
            dist.broadcast(flat, src=0)
        for tensor, piece in zip(group, flat.split([t.numel() for t in group]), strict=True):
            tensor.copy_(piece.view_as(tensor))


@torch.no_grad()
def all_reduce_gradients(world: World, parameters: Sequence[Tensor], weight: float) -> None:
    """Replaces every gradient by the sum over the ranks of ``weight ·`` the rank's gradient (in place, one
    flattened all-reduce per dtype and device). A parameter without a gradient on a rank counts as zero there; it
    keeps no gradient (``None``) only if it has none on every rank, so all ranks' optimizers skip the same
    parameters."""
    for group in _buckets(p for p in parameters if p.numel() > 0).values():
        present = [p.grad is not None for p in group]
        pieces = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * weight for p in group]
        flags = torch.tensor(present, dtype=group[0].dtype, device=group[0].device)
        flat = torch.cat([*pieces, flags])
        with collective(world, "averaging gradients"):
            dist.all_reduce(flat)
        sizes = [p.numel() for p in group]
        values, counts = flat[:sum(sizes)], flat[sum(sizes):]
        for parameter, piece, count in zip(group, values.split(sizes), counts.tolist(), strict=True):
            parameter.grad = piece.view_as(parameter).clone() if count > 0 else None


class GradientSync:
    """Sums the gradients of every parameter an optimizer updates over the ranks before each of its steps, each
    rank's weighted by its share :attr:`weight` of the global batch (``B_r / B``, set by the trainer per batch), so
    the step is the one-process step on the whole batch of a loss that is a mean over the batch.

    It hooks ``Optimizer.step`` (a step pre-hook), so it sees every gradient whatever produced it: the likelihood
    through ``forward``, samples through ``rsample``, score-function and exact estimators, a discriminator's or
    kernel encoder's update inside an objective's ``auxiliary_step``.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.weight = 1.0 / world.size
        self._handles: list[Any] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Synchronizes ``optimizer``'s gradients before each of its steps (nothing for one process)."""
        if self.world.distributed:
            self._handles.append(optimizer.register_step_pre_hook(self._before_step))

    def detach(self) -> None:
        """Removes every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        all_reduce_gradients(self.world, parameters, self.weight)


def optimizers_of(module: nn.Module) -> list[torch.optim.Optimizer]:
    """The optimizers held by ``module`` or its submodules as an ``optimizer`` attribute (an objective's
    discriminator or kernel encoder optimizer), each once."""
    found: dict[int, torch.optim.Optimizer] = {}
    for sub in module.modules():
        optimizer = getattr(sub, "optimizer", None)
        if isinstance(optimizer, torch.optim.Optimizer):
            found.setdefault(id(optimizer), optimizer)
    return list(found.values())


@torch.no_grad()
def fingerprint(modules: Sequence[nn.Module]) -> list[float]:
    """A float64 checksum per parameter and buffer of ``modules`` (sum and sum of squares with positional weights),
    equal on two replicas that are bit-identical."""
    values = []
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            flat = tensor.detach().reshape(-1).to(torch.float64).cpu()
            position = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
            values += [float(flat.sum()), float((flat * flat).sum()), float((flat * position).sum())]
    return values


def check_replicas(world: World, modules: Sequence[nn.Module]) -> None:
    """Raises :class:`DistributedError` if the replicas of ``modules`` differ across ranks (compared by
    :func:`fingerprint`, gathered on every rank)."""
    if not world.distributed:
        return
    mine = fingerprint(modules)
    gathered: list[Any] = [None] * world.size
    with collective(world, "comparing the replicas"):
        dist.all_gather_object(gathered, mine)
    differing = [rank for rank, theirs in enumerate(gathered) if theirs != gathered[0]]
    if differing:
        raise DistributedError(f"rank {world.rank}: the replicas of ranks {differing} differ from rank 0's; the "
                               f"processes are out of step")
