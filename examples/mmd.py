"""Training a RAT-SPN by minimizing the maximum mean discrepancy (MMD) between its samples and the data.

The ``"mmd"`` objective compares a batch of relaxed circuit samples (``hard=False``: differentiable through
the Gumbel-Softmax selections and the leaves) with a data batch under a mixture of RBF kernels. With
``--kernel fixed`` the kernels act on the pixels; with ``--kernel learned`` (MMD-GAN) they act on the
features of a small encoder that ``auxiliary_step`` trains to *maximize* the MMD.

Run::

    python examples/mmd.py                                # 8x8 digits, fixed kernel
    python examples/mmd.py --kernel learned --epochs 20
    python examples/mmd.py --smoke-test

Writes ``samples_epochNNN.png`` and ``samples.png`` to ``--output`` (default ``runs/examples/mmd``).
"""

from __future__ import annotations

import torch
from _common import (
    add_circuit_options,
    batches,
    build_circuit,
    load_data,
    make_parser,
    output_dir,
    schedule,
    smoke_mode,
)

from pyro_spn import SPNDistribution
from pyro_spn.objectives import make_objective
from pyro_spn.temperature import make_temperature
from pyro_spn.train.pictures import save_image_grid


def main(args: list[str] | None = None) -> None:
    parser = make_parser("mmd", __doc__, epochs=20)
    parser.add_argument("--kernel", choices=("fixed", "learned"), default="fixed",
                        help="RBF kernels on the pixels (fixed) or on a learned encoder's features (MMD-GAN)")
    add_circuit_options(parser, depth=3, repetitions=5, sums=10, temperature=True)
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    out = output_dir(options.output)
    torch.manual_seed(options.seed)

    data = load_data(options, smoke)
    epochs, max_batches, batch_size = schedule(options, smoke)
    spn = build_circuit(data, options, smoke)
    scale = data.scale  # kernels on [0, 1] pixels
    objective = make_objective("mmd", event_shape=data.event_shape, kernel=options.kernel, scale=scale)
    temperature = make_temperature("annealed", options.tau, options.tau_min)
    optimizer = torch.optim.Adam(spn.parameters(), lr=options.lr)

    for epoch in range(1, epochs + 1):
        temperature.step(epoch - 1, epochs)
        generator = SPNDistribution(spn, temperature=temperature(), hard=False)
        for x in batches(data.train, batch_size, max_batches):
            objective.auxiliary_step(generator, x)  # trains the kernel encoder (learned kernel only)
            loss = objective.loss(generator, x)  # MMD² between generator.rsample() and x
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            d = SPNDistribution(spn)
            val_nll = -d.log_prob(data.val[:512]).mean()
            save_image_grid(data.preprocessing.inverse(d.sample((64,))), out / f"samples_epoch{epoch:03d}.png")
        print(f"epoch {epoch}: τ {temperature().item():.3f}, MMD² {loss.item():.4f}, "
              f"validation NLL {val_nll.item():.1f} nats")

    with torch.no_grad():
        save_image_grid(data.preprocessing.inverse(SPNDistribution(spn).sample((64,))), out / "samples.png")
    print(f"pictures in {out}")


if __name__ == "__main__":
    main()
