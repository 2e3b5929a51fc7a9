"""Maximum-likelihood training of a RAT-SPN with a plain PyTorch loop.

Shows that the likelihood objective is an ordinary loss: ``make_objective("ll").loss(d, x)`` is
``-d.log_prob(x).mean()``, minimized with Adam over mini-batches of ``load_dataset``. After every epoch the
validation negative log-likelihood (nats per example) is printed and a grid of exact samples is written.

Run::

    python examples/likelihood.py                         # 8x8 digits, bundled with scikit-learn
    python examples/likelihood.py --dataset mnist --download --epochs 5
    python examples/likelihood.py --smoke-test            # a few seconds

Writes ``samples_epochNNN.png`` and ``samples.png`` to ``--output`` (default ``runs/examples/likelihood``).
"""

from __future__ import annotations

import torch
from _common import add_circuit_options, batches, build_circuit, load_data, make_parser, output_dir, smoke_mode

from pyro_spn import SPNDistribution
from pyro_spn.objectives import make_objective
from pyro_spn.train.pictures import save_image_grid


def main(args: list[str] | None = None) -> None:
    parser = make_parser("likelihood", __doc__, epochs=10)
    add_circuit_options(parser, depth=4, repetitions=10, sums=20)
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    out = output_dir(options.output)
    torch.manual_seed(options.seed)

    data = load_data(options, smoke)
    epochs, max_batches = (1, 3) if smoke else (options.epochs, None)
    spn = build_circuit(data, options, smoke)
    objective = make_objective("ll", event_shape=data.event_shape)  # the NLL, as a loss module
    optimizer = torch.optim.Adam(spn.parameters(), lr=options.lr)
    print(f"{options.dataset}: {data.train.shape[0]} training examples of shape {tuple(data.event_shape)}, "
          f"circuit with {sum(p.numel() for p in spn.parameters())} parameters")

    for epoch in range(1, epochs + 1):
        d = SPNDistribution(spn)
        for x in batches(data.train, options.batch_size, max_batches):
            loss = objective.loss(d, x)  # == -d.log_prob(x).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = torch.cat([d.log_prob(x) for x in batches(data.val, 512, max_batches, shuffle=False)])
            samples = d.sample((64,))
        print(f"epoch {epoch}: train loss {loss.item():.3f}, validation NLL {-val.mean().item():.3f} nats")
        save_image_grid(data.preprocessing.inverse(samples), out / f"samples_epoch{epoch:03d}.png")

    with torch.no_grad():
        test_nll = -torch.cat([d.log_prob(x) for x in batches(data.test, 512, max_batches, shuffle=False)]).mean()
        save_image_grid(data.preprocessing.inverse(d.sample((64,))), out / "samples.png")
    print(f"test NLL {test_nll.item():.3f} nats; pictures in {out}")


if __name__ == "__main__":
    main()
