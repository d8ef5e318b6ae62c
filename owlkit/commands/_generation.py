"""Command-line options shared by the commands that generate text."""

from __future__ import annotations


def add_model_argument(parser) -> None:
    parser.add_argument("--model", default=None, help="model folder, or a bundled model: owl-small, owl-tiny (default: owl-small when installed, else owl-tiny)")
    add_load_arguments(parser)


def add_load_arguments(parser) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device: cpu (default), cuda, cuda:1, or auto (spread over the GPUs and the CPU)")
    parser.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights' dtype (default auto: on a CPU float32 when it fits comfortably, else bfloat16; "
                             "on a GPU the checkpoint's own)")
    parser.add_argument("--quantize", default=None, choices=("int8", "int4"),
                        help="weight-only quantization of the decoder and LM head while loading (CPU)")
    parser.add_argument("--group-size", type=int, default=None, help="int4 group size (default: the model config's int4_group_size, else 128)")


def add_generation_arguments(parser) -> None:
    g = parser.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--truncate", action="store_true", help="drop the oldest turns when the prompt is too long")


def generation_options(args) -> dict:
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
        "stop": args.stop,
    }


def load_owl(args):
    from owlkit.inference import Owl  # torch: import only when the command runs

    return Owl.load(args.model, **load_options(args))


def load_options(args) -> dict:
    """``Owl.load`` / ``load_model`` keyword arguments from ``--device`` and ``--dtype``."""
    device = getattr(args, "device", None)
    options = {"dtype": getattr(args, "dtype", None), "quantize": getattr(args, "quantize", None),
               "group_size": getattr(args, "group_size", None)}
    if device == "auto":
        options["device_map"] = "auto"
    else:
        options["device"] = device
    return options
