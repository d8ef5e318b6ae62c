"""``owl small build|claims``: owl-small, the papers' two stages on SmolLM2-135M-Instruct, and the
paper's claims measured on it (docs/owl-small.md, docs/paper-claims.md)."""

from __future__ import annotations

from owlkit.errors import InputError
from owlkit.zoo.claims import CLAIMS, VARIANTS


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["build", "claims"],
                        help="build: world, assembled base, stage 1 (LLM frozen), stage 2 (LoRA), evaluation, install; "
                             "claims: build the variants the paper's claims compare, for every seed, and tabulate them")
    parser.add_argument("--out", default=None, help="working folder (default runs/owl-small; claims: runs/claims)")
    parser.add_argument("--seed", type=int, default=0, help="build: the seed (world, new weights, training order)")
    parser.add_argument("--images", type=int, default=6000, help="images in the training world")
    parser.add_argument("--instructions", type=int, default=24000, help="instruction samples in the world")
    parser.add_argument("--steps-scale", type=float, default=None,
                        help="multiply every stage's steps (default 1 for build, 0.1 for claims and variants)")
    parser.add_argument("--n-per-task", type=int, default=None,
                        help="held-out questions per task (default 100 for build, 50 for claims and variants)")
    parser.add_argument("--stage1", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for stage 1 (repeatable; e.g. optim.lr=3e-4)")
    parser.add_argument("--stage2", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for stage 2 (repeatable)")
    parser.add_argument("--caption-order", choices=["rows", "shuffled", "statements", "rows+statements"], default=None,
                        help="build: stage 1's captions name each picture's objects row by row or in a random order, "
                             "or describe it as lookups ('The square is blue.'), or both rows and statements "
                             "(default: the shipped build's)")
    parser.add_argument("--group-questions", type=int, default=None, metavar="N",
                        help="build: stage 2 asks up to N of a picture's questions in one conversation "
                             "(default: the shipped build's)")
    parser.add_argument("--projector", choices=["words", "abstractor", "linear"], default=None,
                        help="build: word tokens (a new projector writing each picture's caption in the LLM's words), "
                             "owl-tiny's abstractor, or a linear layer on every patch (default: the shipped build's, words)")
    parser.add_argument("--described-weight", type=float, default=None, metavar="W",
                        help="build: stage 2 also learns the world's questions about written scenes (the picture "
                             "replaced by its caption), that source at weight W (default: the shipped build's)")
    parser.add_argument("--no-install", action="store_true", help="do not copy the result into the package")
    parser.add_argument("--variant", choices=list(VARIANTS), default=None,
                        help="build: one variant of docs/paper-claims.md instead of owl-small (never installed; "
                             "the merged model is measured)")
    parser.add_argument("--claim", action="append", choices=list(CLAIMS), default=None,
                        help="claims: which claims (repeatable; default all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="claims: the seeds (default 0 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for training and evaluation (default: the recipes' and torch's)")


def run(args) -> int:
    variant_run = args.action == "claims" or args.variant is not None
    if variant_run and (args.stage1 or args.stage2 or args.caption_order or args.group_questions or args.projector
                        or args.described_weight is not None):
        raise InputError("--stage1/--stage2/--caption-order/--group-questions/--projector/--described-weight change owl-small's own build; "
                         "a variant is defined in owlkit/zoo/claims.py")
    if args.group_questions is not None and args.group_questions < 1:
        raise InputError(f"--group-questions must be at least 1, got {args.group_questions}")
    if args.action == "claims" and args.variant is not None:
        raise InputError("--variant belongs to owl small build; owl small claims runs every variant its --claim needs")
    scale = args.steps_scale if args.steps_scale is not None else (0.1 if variant_run else 1.0)
    n_per_task = args.n_per_task if args.n_per_task is not None else (50 if variant_run else 100)
    options = {"steps_scale": scale, "n_per_task": n_per_task, "n_images": args.images,
               "n_instruct": args.instructions, "threads": args.threads}
    if args.action == "claims":
        from owlkit.zoo.claims_run import run_claims  # torch: import only when the command runs

        print(run_claims(args.claim or list(CLAIMS), args.seeds, args.out or "runs/claims", **options)["markdown"])
        return 0
    if args.variant is not None:
        import json

        from owlkit.zoo.claims_run import run_variant  # torch: import only when the command runs

        print(json.dumps(run_variant(args.variant, args.seed, args.out or "runs/claims", **options), indent=2))
        return 0
    from owlkit.zoo.small import build  # torch: import only when the command runs

    given = (("caption_order", args.caption_order), ("group_questions", args.group_questions),
             ("projector", args.projector), ("described_weight", args.described_weight))
    data = {k: v for k, v in given if v is not None}
    build(args.out or "runs/owl-small", seed=args.seed, n_images=args.images, n_instruct=args.instructions,
          steps_scale=scale, n_per_task=n_per_task, install_assets=not args.no_install,
          overrides={"stage1": args.stage1, "stage2": args.stage2}, **data)
    return 0
