"""Inpainting: complete test digits with half of every image missing, by exact conditional inference.

Trains a RAT-SPN by maximum likelihood (or loads a run's checkpoint with ``--checkpoint``, e.g. one written
by ``pyrospn-train``), marks half of each test image as missing (NaN), and completes it twice:

* ``d.condition(x).sample()``: an exact sample of the missing pixels given the observed ones;
* ``d.mpe(x)``: the max-product completion (the data part of the most probable state of data and latent
  choices; an approximation of the most probable completion).

Run::

    python examples/inpainting.py                         # trains on 8x8 digits, bottom half missing
    python examples/inpainting.py --side left
    pyrospn-train --objective ll --epochs 5 --output runs/ll-digits
    python examples/inpainting.py --checkpoint runs/ll-digits
    python examples/inpainting.py --smoke-test

Writes ``inpainting.png`` (blocks of rows: original / masked / conditional sample / max-product completion) to
``--output``
(default ``runs/examples/inpainting``).
"""

from __future__ import annotations

import torch
from _common import add_circuit_options, batches, build_circuit, load_data, make_parser, output_dir, smoke_mode

from pyro_spn import SPNDistribution
from pyro_spn.train.pictures import save_inpainting_picture
from pyro_spn.train.sample import SIDES, SavedRun, half_mask


def main(args: list[str] | None = None) -> None:
    parser = make_parser("inpainting", __doc__, epochs=10)
    parser.add_argument("--checkpoint", default=None, help="a run folder or checkpoint file to load instead of "
                                                           "training")
    parser.add_argument("--side", choices=SIDES, default="bottom", help="which half of each image is missing")
    parser.add_argument("--num-images", type=int, default=16, help="test images to complete")
    add_circuit_options(parser, depth=4, repetitions=10, sums=20)
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    out = output_dir(options.output)
    torch.manual_seed(options.seed)

    if options.checkpoint is not None:  # a finished run: SavedRun handles every objective (PAE included)
        saved = SavedRun.load(options.checkpoint, device="cpu")
        images = saved.test_images(options.num_images, options.data_root)
        result = saved.inpaint(images, options.side)
        save_inpainting_picture(result["original"], result["missing"], result["sample"], result["mpe"],
                                out / "inpainting.png")
        print(f"completed {images.shape[0]} test images of {saved.config.dataset} from {options.checkpoint}; "
              f"picture in {out}")
        return

    data = load_data(options, smoke)
    if not data.is_image:
        parser.error(f"--dataset must be an image data set, got {options.dataset!r}")
    epochs, max_batches = (1, 3) if smoke else (options.epochs, None)
    spn = build_circuit(data, options, smoke)
    d = SPNDistribution(spn)
    optimizer = torch.optim.Adam(spn.parameters(), lr=options.lr)
    for epoch in range(1, epochs + 1):
        for x in batches(data.train, options.batch_size, max_batches):
            loss = -d.log_prob(x).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: train NLL {loss.item():.2f} nats")

    with torch.no_grad():
        images = data.test[:options.num_images]
        missing = half_mask(images.shape, options.side)
        evidence = images.masked_fill(missing, float("nan"))  # NaN = missing
        sample = d.condition(evidence).sample()  # exact conditional sample
        mpe = d.mpe(evidence)  # max-product completion
        observed_ll = d.log_prob(evidence).mean()  # the missing half marginalized
    inverse = data.preprocessing.inverse
    save_inpainting_picture(inverse(images), missing, inverse(sample), inverse(mpe), out / "inpainting.png")
    print(f"log p(observed half) {observed_ll.item():.2f} nats on average; picture in {out}")


if __name__ == "__main__":
    main()
