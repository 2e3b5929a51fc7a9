"""Adversarial training of a RAT-SPN: the circuit's differentiable sampler is the GAN generator.

Each step, ``SPNDistribution(spn, temperature=τ, hard=False)`` draws *relaxed* samples (Gumbel-Softmax
selections at every sum node, interpolated child samples); the ``"adv"`` objective first updates its
discriminator on real and generated batches (``auxiliary_step``), then returns the non-saturating generator
loss, which back-propagates through the samples into the circuit's weights and leaf parameters. The
temperature is annealed from 1 to 0.5 (``make_temperature("annealed")``). Pictures show *exact* samples.

Run::

    python examples/adversarial.py                        # 8x8 digits
    python examples/adversarial.py --dataset mnist --download --epochs 10
    python examples/adversarial.py --smoke-test

Writes ``samples_epochNNN.png`` and ``samples.png`` to ``--output`` (default ``runs/examples/adversarial``).
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
    parser = make_parser("adversarial", __doc__, epochs=20)
    add_circuit_options(parser, depth=3, repetitions=5, sums=10, temperature=True)
    parser.add_argument("--discriminator-lr", type=float, default=2e-4, help="the discriminator's Adam learning rate")
    parser.add_argument("--discriminator-steps", type=int, default=1, help="discriminator updates per circuit update")
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    out = output_dir(options.output)
    torch.manual_seed(options.seed)

    data = load_data(options, smoke)
    epochs, max_batches, batch_size = schedule(options, smoke)
    spn = build_circuit(data, options, smoke)
    scale = data.scale  # the discriminator sees [0, 1] pixels
    objective = make_objective("adv", event_shape=data.event_shape, lr=options.discriminator_lr,
                               discriminator_steps=options.discriminator_steps, scale=scale)
    temperature = make_temperature("annealed", options.tau, options.tau_min)
    optimizer = torch.optim.Adam(spn.parameters(), lr=options.lr)

    for epoch in range(1, epochs + 1):
        temperature.step(epoch - 1, epochs)
        generator = SPNDistribution(spn, temperature=temperature(), hard=False)  # relaxed, differentiable samples
        for x in batches(data.train, batch_size, max_batches):
            metrics = objective.auxiliary_step(generator, x)  # discriminator update(s)
            loss = objective.loss(generator, x)  # generator loss through generator.rsample()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            d = SPNDistribution(spn)
            val_nll = -d.log_prob(data.val[:512]).mean()
            save_image_grid(data.preprocessing.inverse(d.sample((64,))), out / f"samples_epoch{epoch:03d}.png")
        print(f"epoch {epoch}: τ {temperature().item():.3f}, generator loss {loss.item():.3f}, "
              f"discriminator loss {metrics['discriminator_loss']:.3f}, validation NLL {val_nll.item():.1f} nats")

    with torch.no_grad():
        save_image_grid(data.preprocessing.inverse(SPNDistribution(spn).sample((64,))), out / "samples.png")
    print(f"pictures in {out}")


if __name__ == "__main__":
    main()
