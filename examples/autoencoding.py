"""Probabilistic auto-encoding (PAE): one circuit over the joint of the data ``x`` and Gaussian latents ``z``.

The ``"pae"`` objective builds the joint circuit itself (``objective.build_spn``, i.e. ``build_joint_spn``:
the data's leaves over ``x``, Normal leaves over ``z``). Encoding is the MPE ``z = argmax_z S(z | x)``,
decoding a differentiable conditional sample ``x̂ ~ S(x | z)``, and the loss is the reconstruction error
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
from _common import batches, leaf_for, make_parser, output_dir, smoke_mode

from pyro_spn import SPNDistribution
from pyro_spn.data import load_dataset
from pyro_spn.objectives import make_objective
from pyro_spn.temperature import make_temperature
from pyro_spn.train.pictures import save_image_grid


def main(args: list[str] | None = None) -> None:
    parser = make_parser("autoencoding", __doc__, epochs=20)
    parser.add_argument("--latent-dim", type=int, default=16, help="Gaussian latent variables")
    parser.add_argument("--depth", type=int, default=3, help="circuit depth D")
    parser.add_argument("--num-repetitions", type=int, default=5, help="repetitions R")
    parser.add_argument("--num-sums", type=int, default=10, help="sum units per region K")
    parser.add_argument("--tau", type=float, default=1.0, help="starting Gumbel-Softmax temperature")
    parser.add_argument("--tau-min", type=float, default=0.5, help="final Gumbel-Softmax temperature")
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    out = output_dir(options.output)
    torch.manual_seed(options.seed)

    data = load_dataset(options.dataset, root=options.data_root, download=options.download, seed=options.seed,
                        num_samples=512 if smoke else None)
    depth, repetitions, sums = (2, 2, 4) if smoke else (options.depth, options.num_repetitions, options.num_sums)
    epochs, max_batches, batch_size = (1, 3, 32) if smoke else (options.epochs, None, options.batch_size)
    scale = float(data.total_count) if data.leaf == "binomial" else 1.0
    objective = make_objective("pae", event_shape=data.event_shape, latent_dim=options.latent_dim,
                               reconstruction="mse" if data.leaf == "normal" else "bce", scale=scale)
    spn = objective.build_spn(data.event_shape, leaf_for(data), depth=depth, num_repetitions=repetitions,
                              num_sums=sums, num_leaves=sums, seed=options.seed)  # over (x, z)
    temperature = make_temperature("annealed", options.tau, options.tau_min)
    optimizer = torch.optim.Adam(spn.parameters(), lr=options.lr)
    print(f"joint circuit over {spn.event_shape} = {data.event_shape} data + {options.latent_dim} latents")

    for epoch in range(1, epochs + 1):
        temperature.step(epoch - 1, epochs)
        d = SPNDistribution(spn, temperature=temperature(), hard=False)
        for x in batches(data.train, batch_size, max_batches):
            loss = objective.loss(d, x)  # reconstruction error of decode(encode(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = data.val[:256]
            val_error = objective.reconstruction_error(objective.reconstruct(SPNDistribution(spn), val), val).mean()
        print(f"epoch {epoch}: τ {temperature().item():.3f}, train loss {loss.item():.2f}, "
              f"validation reconstruction error {val_error.item():.2f}")

    with torch.no_grad():
        d = SPNDistribution(spn)  # exact draws for the pictures
        originals = data.test[:32]
        reconstructions = objective.reconstruct(d, originals)
        rows = torch.stack([originals.reshape(4, 8, *data.event_shape),
                            reconstructions.reshape(4, 8, *data.event_shape)], 1).flatten(0, 2)
        save_image_grid(data.preprocessing.inverse(rows), out / "reconstructions.png")
        save_image_grid(data.preprocessing.inverse(objective.sample(d, 64)), out / "samples.png")
    print(f"pictures in {out}")


if __name__ == "__main__":
    main()
