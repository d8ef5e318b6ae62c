"""``owl small build [--out DIR]``: owl-small, the papers' two stages on SmolLM2-135M-Instruct."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["build"],
                        help="build: world, assembled base, stage 1 (LLM frozen), stage 2 (LoRA), evaluation, install")
    parser.add_argument("--out", default="runs/owl-small", help="working folder (world, runs, evaluation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=6000, help="images in the training world")
    parser.add_argument("--instructions", type=int, default=24000, help="instruction samples in the world")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps (quick trials)")
    parser.add_argument("--n-per-task", type=int, default=100, help="held-out questions per task for the evaluation")
    parser.add_argument("--stage1", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for stage 1 (repeatable; e.g. optim.lr=3e-4)")
    parser.add_argument("--stage2", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for stage 2 (repeatable)")
    parser.add_argument("--no-install", action="store_true", help="do not copy the result into the package")


def run(args) -> int:
    from owlkit.zoo.small import build  # torch: import only when the command runs

    build(args.out, seed=args.seed, n_images=args.images, n_instruct=args.instructions, steps_scale=args.steps_scale,
          n_per_task=args.n_per_task, install_assets=not args.no_install,
          overrides={"stage1": args.stage1, "stage2": args.stage2})
    return 0
