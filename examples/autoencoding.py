"""Probabilistic auto-encoding (PAE): one circuit over the joint of the data ``x`` and Gaussian latents ``z``.

The circuit is a :class:`pyro_spn.joint.JointSPN`: the data's leaves over ``x``, Normal leaves over ``z``. Its data
marginal (``JointSPN.distribution``) encodes by the max-product completion ``z = argmax_z S(x, z)``, decodes by a
differentiable conditional sample ``x̂ ~ S(x | z)``, and the ``"pae"`` objective's loss is the reconstruction error
of ``x̂``, back-propagated through the relaxed sampler. No separate encoder or decoder network exists.

Run::

    python examples/autoencoding.py                       # 8x8 digits
    python examples/autoencoding.py --latent-dim 32 --epochs 30
    python examples/autoencoding.py --smoke-test

Writes ``reconstructions.png`` (rows alternate: originals, their reconstructions) and ``samples.png``
(exact draws of the data part of the joint) to ``--output`` (default ``runs/examples/autoencoding``).
"""

from __future__ import annotations

import torch
from _common import (
    add_circuit_options,
    batches,
    circuit_sizes,
    load_data,
    make_parser,
    output_dir,
    schedule,
    smoke_mode,
)

from pyro_spn.joint import JointSPN
from pyro_spn.leaves import Normal
from pyro_spn.objectives import make_objective
from pyro_spn.temperature import make_temperature
from pyro_spn.train.pictures import save_image_grid


def main(args: list[str] | None = None) -> None:
    parser = make_parser("autoencoding", __doc__, epochs=20)
    parser.add_argument("--latent-dim", type=int, default=16, help="Gaussian latent variables")
    add_circuit_options(parser, depth=3, repetitions=5, sums=10, temperature=True)
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    out = output_dir(options.output)
    torch.manual_seed(options.seed)

    data = load_data(options, smoke)
    depth, repetitions, sums = circuit_sizes(options, smoke)
    epochs, max_batches, batch_size = schedule(options, smoke)
    objective = make_objective("pae", event_shape=data.event_shape, scale=data.scale,
                               reconstruction="mse" if isinstance(data.leaf, Normal) else "bce")
    model = JointSPN(data.event_shape, data.leaf, Normal(), options.latent_dim, depth=depth,
                     num_repetitions=repetitions, num_sums=sums, num_leaves=sums, seed=options.seed)  # over (x, z)
    temperature = make_temperature("annealed", options.tau, options.tau_min)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    print(f"joint circuit over {model.spn.event_shape} = {data.event_shape} data + {options.latent_dim} latents")

    for epoch in range(1, epochs + 1):
        temperature.step(epoch - 1, epochs)
        d = model.distribution(temperature=temperature(), hard=False)
        for x in batches(data.train, batch_size, max_batches):
            loss = objective.loss(d, x)  # reconstruction error of decode(encode(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = data.val[:256]
            val_error = objective.reconstruction_error(model.distribution().reconstruct(val), val).mean()
        print(f"epoch {epoch}: τ {temperature().item():.3f}, train loss {loss.item():.2f}, "
              f"validation reconstruction error {val_error.item():.2f}")

    with torch.no_grad():
        d = model.distribution()  # exact draws for the pictures
        originals = data.test[:32]
        reconstructions = d.reconstruct(originals)
        rows = torch.stack([originals.reshape(4, 8, *data.event_shape),
                            reconstructions.reshape(4, 8, *data.event_shape)], 1).flatten(0, 2)
        save_image_grid(data.preprocessing.inverse(rows), out / "reconstructions.png")
        save_image_grid(data.preprocessing.inverse(d.sample((64,))), out / "samples.png")
    print(f"pictures in {out}")


if __name__ == "__main__":
    main()
