"""``owl tiny build [--out DIR]``: train owl-tiny through the papers' paradigm and install it."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["build"], help="build: world, tokenizer, text and vision pre-training, stages 1-2, eval")
    parser.add_argument("--out", default="runs/owl-tiny", help="working folder (world, runs, evaluation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=6000, help="images in the training world")
    parser.add_argument("--instructions", type=int, default=24000, help="instruction samples in the world")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps (quick trials)")
    parser.add_argument("--no-install", action="store_true", help="do not copy the result into the package")


def run(args) -> int:
    from owlkit.zoo.tiny import build  # torch: import only when the command runs

    build(args.out, seed=args.seed, n_images=args.images, n_instruct=args.instructions,
          steps_scale=args.steps_scale, install_assets=not args.no_install)
    return 0
