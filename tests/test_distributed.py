"""Training over several processes (torch.distributed, gloo, loopback 127.0.0.1 only): a 2-process likelihood run
equals the 1-process run, replicas stay identical for every objective, rank 0 alone writes, two "nodes", a killed
rank, resume, and the experiment runner's runs spread over the ranks.

The fast test forks two processes that run the trainer; the slow ones start ``torchrun`` as a user would.
"""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from pyro_spn.experiment.protocol import share
from pyro_spn.train import TrainConfig, Trainer, distributed
from pyro_spn.train.checkpoint import load_checkpoint
from pyro_spn.train.distributed import World, all_reduce_gradients, world_from_environment

LOOPBACK = "127.0.0.1"
TINY = dict(depth=2, num_repetitions=2, num_sums=2, num_leaves=2, batch_size=32, epochs=2, max_batches_per_epoch=3,
            num_final_samples=8, latent_dim=2, device="cpu")
CLI_TINY = ["--depth", "2", "--repetitions", "2", "--sums", "2", "--leaves", "2", "--batch-size", "32",
            "--max-batches-per-epoch", "3", "--num-final-samples", "8", "--latent-dim", "2", "--device", "cpu",
            "--no-progress"]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    """A child's environment: loopback only, one thread, passive OpenMP waits."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive",
           "MASTER_ADDR": LOOPBACK, "PYRO_SPN_DIST_TIMEOUT": "120", **extra}
    env.pop("RANK", None)
    return env


def torchrun(*args: str, nproc: int = 2, port: int | None = None, nodes: tuple[int, int] | None = None) -> list[str]:
    """The command line of ``torchrun`` on the loopback address (static rendezvous)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_addr={LOOPBACK}", f"--master_port={port or free_port()}"]
    if nodes is not None:
        command += [f"--nnodes={nodes[0]}", f"--node_rank={nodes[1]}"]
    return command + list(args)


def train_script() -> str:
    return str(Path(sys.executable).parent / "pyrospn-train")


def spn_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt", ("spn",))["spn"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(one: Path, two: Path, epochs: int) -> None:
    """The 2-process run ``two`` equals the 1-process run ``one`` up to float round-off."""
    a, b = spn_state(one), spn_state(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    ma, mb = metrics(one), metrics(two)
    assert [r["epoch"] for r in mb] == list(range(1, epochs + 1)) == [r["epoch"] for r in ma]
    for ra, rb in zip(ma, mb, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
        assert rb["val_nll"] == pytest.approx(ra["val_nll"], rel=1e-5)


# -- units (one process) ----------------------------------------------------------------------------------------------
def test_world_from_torchrun_environment():
    assert world_from_environment({}) is None
    assert world_from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        world_from_environment({"RANK": "1", "WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="rank 2 of 2"):
        world_from_environment({"RANK": "2", "WORLD_SIZE": "2"})


def test_shards_cover_the_global_batch_once():
    index = torch.arange(11)
    shards = [World(rank, 3).shard(index) for rank in range(3)]
    assert torch.equal(torch.cat(shards), index)
    assert [s.numel() for s in shards] == [4, 4, 3]
    with pytest.raises(ValueError, match="batch-size >= 3"):
        World(0, 3).shard(torch.arange(2))
    assert len({World(rank, 2).seed(0, 1) for rank in range(2)}) == 2


def test_experiment_runs_are_dealt_out_once():
    tasks = list(range(7))
    shares = [share(tasks, World(rank, 3)) for rank in range(3)]
    assert sorted(t for s in shares for t in s) == tasks


def test_timeout_from_environment(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "12.5")
    assert distributed.timeout_from_environment() == timedelta(seconds=12.5)
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "-3")
    with pytest.raises(ValueError, match=distributed.TIMEOUT_VARIABLE):
        distributed.timeout_from_environment()


# -- two forked processes (the default suite) -------------------------------------------------------------------------
def _fork_worker(rank: int, port: int, options: dict, results: "multiprocessing.Queue", die: int | None) -> None:
    """Rank ``rank`` of a 2-process run: trains ``options`` and reports its parameters (rank ``die`` exits at once
    after the trainer is built)."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR=LOOPBACK,
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    try:
        world = distributed.start(timedelta(seconds=60))
        trainer = Trainer(TrainConfig(**options), progress=False, world=world)
        if rank == die:
            results.put((rank, "died"))
            time.sleep(0.5)  # the report leaves before the process
            os._exit(1)
        trainer.fit()
        # numpy arrays travel by value (a tensor would travel as a file descriptor of the exiting process)
        results.put((rank, [p.detach().numpy().copy() for p in trainer.model.parameters()]))
        distributed.stop(world)
    except BaseException as error:  # reported to the test, which fails with it
        results.put((rank, f"{type(error).__name__}: {error}"))


def run_forked(options: dict, die: int | None = None, check: bool = True) -> dict[int, list | str]:
    """Each rank's parameters after training ``options`` on 2 forked processes (or its error, unless ``check``)."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    port = free_port()
    workers = [context.Process(target=_fork_worker, args=(rank, port, options, results, die)) for rank in range(2)]
    for worker in workers:
        worker.start()
    reports = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    for rank, report in reports.items():
        assert not (check and isinstance(report, str)), f"rank {rank}: {report}"
    return reports


def test_two_processes_train_likelihood_like_one(tmp_path):
    """LL on 2 processes (gloo) equals the 1-process run with the same options (global batch 32 = 2 × 16), the
    replicas are bit-identical, and only rank 0 wrote (one run folder)."""
    reports = run_forked({**TINY, "output": str(tmp_path / "two")})
    for first, second in zip(reports[0], reports[1], strict=True):
        assert torch.equal(torch.from_numpy(first), torch.from_numpy(second))
    Trainer(TrainConfig(**TINY, output=str(tmp_path / "one")), progress=False).fit()
    assert_same_run(tmp_path / "one", tmp_path / "two", epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_rank_0_refusal_stops_every_rank(tmp_path):
    """A folder holding files is refused by rank 0, and every rank stops with the same error (no rank waits)."""
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    reports = run_forked({**TINY, "output": str(tmp_path / "busy")}, check=False)
    assert reports[0] == reports[1] and reports[0].startswith("ValueError: output") and "holds files" in reports[0]
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_a_dead_peer_is_a_one_line_error(tmp_path):
    """Rank 1 vanishes after start-up: rank 0's next collective fails fast with a DistributedError, not a hang."""
    started = time.monotonic()
    reports = run_forked({**TINY, "output": str(tmp_path / "run")}, die=1, check=False)
    assert reports[1] == "died"
    assert reports[0].startswith("DistributedError: rank 0 of 2:") and "--resume" in reports[0]
    assert "\n" not in reports[0] and time.monotonic() - started < 60


@torch.no_grad()
def test_gradient_weights_sum_to_the_global_mean():
    """One process: the all-reduce is the identity, a weight scales, missing gradients stay missing."""
    parameter, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    parameter.grad = torch.full((3,), 2.0)

    assert not torch.distributed.is_initialized()
    torch.distributed.init_process_group("gloo", init_method=f"tcp://{LOOPBACK}:{free_port()}", rank=0, world_size=1)
    try:  # a 1-process group on the loopback address
        all_reduce_gradients(World(0, 1), [parameter, unused], 0.25)
    finally:
        torch.distributed.destroy_process_group()
    assert torch.equal(parameter.grad, torch.full((3,), 0.5)) and unused.grad is None


# -- torchrun (slow) --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_likelihood_equals_one_process_and_resumes(tmp_path):
    two = tmp_path / "two"
    subprocess.run(torchrun(train_script(), *CLI_TINY, "--epochs", "2", "--output", str(two)), env=environment(),
                   check=True, timeout=300)
    subprocess.run(torchrun(train_script(), "--resume", "--epochs", "3", "--output", str(two), "--no-progress"),
                   env=environment(), check=True, timeout=300)
    Trainer(TrainConfig(**{**TINY, "epochs": 3}, output=str(tmp_path / "one")), progress=False).fit()
    assert_same_run(tmp_path / "one", two, epochs=3)


REPLICA_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    from pyro_spn.train import TrainConfig, Trainer, distributed

    world = distributed.start()
    report = {}
    for name, options in json.loads(sys.argv[1]).items():
        trainer = Trainer(TrainConfig(**options), progress=False, world=world)
        trainer.fit()
        differing = []
        for index, parameter in enumerate(trainer.model.parameters()):
            gathered = [torch.empty_like(parameter) for _ in range(world.size)]
            dist.all_gather(gathered, parameter.detach().contiguous())
            if not all(torch.equal(gathered[0], other) for other in gathered[1:]):
                differing.append(index)
        report[name] = differing
    if world.is_main:
        with open(sys.argv[2], "w") as file:
            json.dump(report, file)
    distributed.stop(world)
""")

REPLICA_RUNS = {
    "adv": dict(objective="adv", temperature="learned", discriminator_steps=2),
    "adv-straight-region": dict(objective="adv", estimator="straight_through", interpolation="region"),
    "mmd-learned": dict(objective="mmd", mmd_adversarial=True, estimator="straight_through"),
    "mmd-exact": dict(objective="mmd", mmd_adversarial=False, estimator="exact"),
    "pae": dict(objective="pae"),
    "pae-score": dict(objective="pae", estimator="score", nll_weight=0.5),
    "gan": dict(model="gan", num_sums=4, num_leaves=4),
    "vae": dict(model="vae", num_sums=4, num_leaves=4),
    "mmd-gan": dict(model="mmd-gan", num_sums=4, num_leaves=4),
}


@pytest.mark.slow
def test_torchrun_replicas_stay_identical_for_every_objective(tmp_path):
    script = tmp_path / "replicas.py"
    script.write_text(REPLICA_SCRIPT)
    runs = {name: {**TINY, **options, "output": str(tmp_path / "runs" / name)}
            for name, options in REPLICA_RUNS.items()}
    report = tmp_path / "report.json"
    subprocess.run(torchrun(str(script), json.dumps(runs), str(report)), env=environment(), check=True, timeout=600)
    assert json.loads(report.read_text()) == {name: [] for name in REPLICA_RUNS}
    for name in REPLICA_RUNS:
        run = tmp_path / "runs" / name
        assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl",
                                                          "samples.h5", "samples_epoch001.png", "samples_epoch002.png"]
        assert [r["epoch"] for r in metrics(run)] == [1, 2]


@pytest.mark.slow
def test_two_nodes_on_the_loopback_address(tmp_path):
    port, run = free_port(), tmp_path / "run"
    nodes = [subprocess.Popen(torchrun(train_script(), *CLI_TINY, "--epochs", "2", "--output", str(run), nproc=1,
                                       port=port, nodes=(2, rank)), env=environment()) for rank in range(2)]
    assert [node.wait(timeout=300) for node in nodes] == [0, 0]
    assert [r["epoch"] for r in metrics(run)] == [1, 2] and (run / "samples.h5").is_file()


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _rank_of(pid: int) -> int | None:
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(v[5:]) for v in variables if v.startswith(b"RANK=")), None)


@pytest.mark.slow
def test_a_killed_rank_stops_the_others_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    job = subprocess.Popen(torchrun(train_script(), *CLI_TINY, "--epochs", "40", "--output", str(run)),
                           env=environment(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run / "checkpoint.pt").is_file():
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    victim = next(pid for pid in _children(job.pid) if _rank_of(pid) == 1)
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0 and time.monotonic() - started < 120, stderr[-2000:]
    finished = len(metrics(run))
    assert 1 <= finished < 40
    subprocess.run(torchrun(train_script(), "--resume", "--output", str(run), "--no-progress"), env=environment(),
                   check=True, timeout=600)
    assert [r["epoch"] for r in metrics(run)] == list(range(1, 41)) and (run / "samples.h5").is_file()


EXPERIMENT_SCRIPT = textwrap.dedent("""
    import os, sys
    from pyro_spn.experiment import protocol
    from pyro_spn.experiment.cli import experiment

    original = protocol.execute

    def logged(task):
        with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.log"), "a") as log:
            log.write(str(task.config.output) + " " + ",".join(task.splits) + "\\n")
        return original(task)

    protocol.execute = logged
    experiment.main(sys.argv[2:], prog_name="pyrospn-experiment")
""")


@pytest.mark.slow
def test_experiment_spreads_its_runs_over_two_ranks(tmp_path):
    script = tmp_path / "experiment.py"
    script.write_text(EXPERIMENT_SCRIPT)
    logs = tmp_path / "logs"
    logs.mkdir()
    options = ["--output", str(tmp_path / "experiment"), "--datasets", "2-moons", "--methods", "ll,adv",
               "--lrs", "0.01,0.001", "--batch-sizes", "32", "--seeds", "2", "--epochs", "1", "--num-samples", "64",
               "--depth", "2", "--repetitions", "2", "--sums", "2", "--leaves", "2", "--max-batches-per-epoch", "2",
               "--device", "cpu", "--no-progress"]
    subprocess.run(torchrun(str(script), str(logs), *options), env=environment(), check=True, timeout=600)
    lines = {rank: (logs / f"rank{rank}.log").read_text().splitlines() for rank in range(2)}
    executed = lines[0] + lines[1]
    assert len(executed) == len(set(executed)) == 2 * 2 + 2 * 2  # grid: methods × lrs; test: methods × seeds
    assert lines[0] and lines[1]  # both ranks worked
    results = (tmp_path / "experiment" / "results.csv").read_text().splitlines()
    assert len(results) == 1 + len(executed)
