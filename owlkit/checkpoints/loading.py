"""Loading model folders exactly: official mPLUG-Owl / mPLUG-Owl2 and owlkit's own.

``load_model`` recognises the folder by ``config.json``'s ``model_type``:

* ``mplug_owl2``: the official mPLUG-Owl2 (LLaMA-2) release;
* ``mplug-owl``: the official mPLUG-Owl (v1) release;
* ``owlkit``: folders written by owlkit (``save_pretrained`` / ``owl convert``).

Weights may be ``model.safetensors``, ``pytorch_model.bin`` (read with
``torch.load(weights_only=True)``: no arbitrary unpickling) or sharded ``*.index.json`` of
either kind. Every parameter must be found with its exact shape: a missing, unexpected or
mis-shaped tensor is a :class:`~owlkit.errors.CheckpointError` listing the names. Nothing is ever
left at random initialisation.

Official names come from :mod:`owlkit.checkpoints.names`. Deterministic buffers of the
official checkpoints: LLaMA ``rotary_emb.inv_freq`` is recomputed (and checked when present);
the abstractor's sin-cos tables, when a checkpoint carries them, are checked against the
computed ones and then kept as they are (buffers of the model, saved with it), so
``owl convert`` round trips are bit-identical whatever numpy computes.

The flow: read the config -> build the model on the meta device (quantized layers swapped in
where asked) -> plan file name -> model name and check names and shapes before reading
anything -> choose the dtype that fits -> stream each tensor to its device (quantizing as it
is read) -> rebuild non-persistent buffers -> refuse anything left unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from transformers import GenerationConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from owlkit import quantization as Q
from owlkit.checkpoints.names import FORMATS, OWLKIT, carried_names, official_buffers, official_names
from owlkit.checkpoints.official_config import config_from_official
from owlkit.config import OwlConfig
from owlkit.errors import CheckpointError
from owlkit.memory import choose_dtype, parse_dtype
from owlkit.models.owl import OwlForCausalLM
from owlkit.weight_files import TensorInfo, read_json, stream_tensors, weight_index


def detect_format(folder: str | Path) -> str:
    """``mplug_owl2``, ``mplug-owl`` or ``owlkit`` for a model folder (raises otherwise)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; pass a model folder holding config.json and weights")
    cfg = folder / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"no config.json in {folder}; expected an official mPLUG-Owl/mPLUG-Owl2 or owlkit model folder")
    model_type = read_json(cfg).get("model_type")
    if model_type not in FORMATS:
        raise CheckpointError(
            f"{cfg} has model_type {model_type!r}; owlkit loads {', '.join(repr(k) for k in FORMATS)} folders"
        )
    return model_type


def _summarise(names: Iterable[str], limit: int = 6) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_table(name: str, got: torch.Tensor, expected: torch.Tensor, folder: Path) -> None:
    if tuple(got.shape) != tuple(expected.shape) or not torch.allclose(got.float(), expected, atol=1e-3, rtol=1e-3):
        raise CheckpointError(
            f"{name} in {folder} differs from the deterministic table this config implies; "
            "the config does not match the weights"
        )


def read_config(folder: Path, kind: str) -> OwlConfig:
    raw = read_json(folder / "config.json")
    if kind != OWLKIT:
        return config_from_official(raw)
    try:
        return OwlConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} is not a valid owlkit config: {exc}") from None


def _plan(index: dict[str, TensorInfo], config: OwlConfig, kind: str, expected: dict[str, torch.Size],
          folder: Path) -> dict[str, str | None]:
    """File tensor name -> model name (None: a deterministic buffer that is only checked).

    Every check that needs no tensor data happens here, before anything is read: official
    names, missing and unexpected tensors, shapes.
    """
    carried = carried_names(config)
    if kind == OWLKIT:
        plan: dict[str, str | None] = {name: name for name in index}
    else:
        inverse = {official: ours for ours, official in official_names(config).items()}
        inverse.update({official: ours for ours, official in carried.items()})
        buffers = official_buffers(config)
        optional = set(carried.values())  # third-party conversions may lack the tables
        missing = [official for official in inverse if official not in index and official not in optional]
        unexpected = [k for k in index if k not in inverse and k not in buffers]
        _raise_mismatch(f"weights in {folder} do not match config.json", missing, unexpected)
        plan = {name: inverse.get(name) for name in index}
        for name, table in buffers.items():  # shapes of the deterministic tables, before reading
            if name in index and index[name].shape != tuple(table.shape):
                raise CheckpointError(f"{name} in {folder} has shape {list(index[name].shape)}, the config implies "
                                      f"{list(table.shape)}; the config does not match the weights")
    shapes = {ours: index[name].shape for name, ours in plan.items() if ours is not None and ours not in carried}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} {list(shapes[k])} vs {list(expected[k])}" for k in expected
             if k in shapes and tuple(shapes[k]) != tuple(expected[k])]
    _raise_mismatch(f"weights in {folder} do not match its config", missing, unexpected, wrong)
    return plan


def _raise_mismatch(what: str, missing: list[str], unexpected: list[str], wrong: list[str] = ()) -> None:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s): {_summarise(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensor(s): {_summarise(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} tensor(s) of the wrong shape (file vs config): {_summarise(wrong, 3)}")
    if parts:
        raise CheckpointError(f"{what}: " + "; ".join(parts))


def _assign(model, name: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in the (meta) model as its parameter or buffer ``name``."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=module._parameters[attr].requires_grad)
    else:
        module._buffers[attr] = tensor


def load_model(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
               *, device_map: str | dict | None = None, max_memory: int | str | None = None,
               quantize: str | int | None = None, group_size: int | None = None, keep_portable: bool = False):
    """Load an official mPLUG-Owl / mPLUG-Owl2 folder or an owlkit folder, exactly.

    ``dtype=None`` follows :mod:`owlkit.memory`'s rule (CPU: float32 when it fits comfortably,
    else bfloat16; a GPU: the stored dtype); a dtype that cannot fit is refused before anything
    is read. ``device`` (default CPU) receives each tensor as it is read, so nothing of the
    model's size is ever held twice (a GPU load keeps no CPU copy). ``device_map="auto"`` (or
    a dict of module prefixes to devices) spreads the layers over the GPUs and the CPU with
    accelerate, as transformers does. ``max_memory`` caps the memory the model may use (bytes
    or ``"8GB"``; also ``OWLKIT_MAX_MEMORY``). ``quantize="int8" | "int4"`` quantizes the
    decoder's linear layers and the LM head as each weight is read (:mod:`owlkit.quantization`;
    ``group_size`` for int4: the config's ``int4_group_size`` where it names one, else 128), so
    the float model is never held; a folder written
    quantized (``owl quantize``) loads as it is. int4 layers are repacked into the kernel's
    layout as they load and keep no portable copy, unless ``keep_portable`` (to save the model).
    """
    folder = Path(path)
    kind = detect_format(folder)
    config = read_config(folder, kind)
    index = weight_index(folder)
    bits = Q.parse_quantize(quantize)
    stored_q = getattr(config, Q.CONFIG_KEY, None)
    with torch.device("meta"):
        model = OwlForCausalLM(config)
    if stored_q:
        if bits is not None and bits != stored_q["bits"]:
            raise CheckpointError(f"{folder} is already quantized to int{stored_q['bits']}; load it without quantize "
                                  "(or quantize its float original)")
        Q.replace_linears(model, stored_q["bits"], stored_q["group_size"], set(stored_q.get("kept", [])))
        for name, rank in stored_q.get("low_rank", {}).items():  # shells the file's factors fill
            layer = model.get_submodule(name)
            layer.set_low_rank(torch.empty(rank, layer.in_features, device="meta"),
                               torch.empty(layer.out_features, rank, device="meta"))
        bits = None  # nothing to quantize while loading: the file holds the quantized tensors
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = bool(config.tie_word_embeddings)
    if tied:  # the file holds the embeddings once (an LLM with tied embeddings, e.g. SmolLM2)
        expected.pop("lm_head.weight", None)
    plan = _plan(index, config, kind, expected, folder)
    kept: list[str] = []
    in_int8: list[str] = []  # int4 asked for, a width int4 cannot hold: int8
    low_rank: dict = {}  # layer -> (lora_A, lora_B) kept out of the quantized weight
    if bits is not None:
        group_size = Q.group_size_for(config if bits == 4 else None, group_size, str(folder / "config.json"))
        if device_map is not None or (device is not None and torch.device(device).type != "cpu"):
            raise CheckpointError("quantized models run on the CPU (PyTorch's int8/int4 CPU kernels); "
                                  "drop device / device_map, or load unquantized on the GPU")
        kept, in_int8 = Q.replace_linears(model, bits, group_size)
        for name, pair in Q.read_low_rank(folder).items():
            try:
                layer = model.get_submodule(name)
            except AttributeError:
                raise CheckpointError(f"{folder / Q.LOW_RANK_FILE} names {name}, not a layer of this model; delete "
                                      "the file to quantize the merged weights") from None
            if isinstance(layer, Q.QuantizedLinear):
                low_rank[name] = pair
    if device_map is not None and not isinstance(device_map, dict) and str(device_map) != "auto":
        device, device_map = device_map, None  # transformers-style device_map="cuda:0": one device
    try:
        device = torch.device(device or "cpu")
    except RuntimeError:
        raise CheckpointError(f"unknown device {device!r}; use cpu, cuda, cuda:N (or device_map='auto')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device} was asked for but this machine has no usable CUDA GPU; use cpu")
    floats = [info.dtype for info in index.values() if info.dtype.is_floating_point]
    stored = max(set(floats), key=floats.count) if floats else torch.float32
    num_params = sum(p.numel() for p in model.parameters())
    quantized_bytes = sum(b.numel() * b.element_size() for m in model.modules() if isinstance(m, Q.QuantizedLinear)
                          for b in m.buffers())
    requested = parse_dtype(dtype)
    if device_map is None:
        dtype = choose_dtype(num_params, stored, device, requested, max_memory, what=str(folder),
                             fixed_bytes=quantized_bytes)
    else:
        dtype = requested or (stored if torch.cuda.is_available() else torch.float32)
    model = model.to(dtype)
    place = _placement(model, device_map, device, dtype, max_memory)
    buffers = official_buffers(config) if kind != OWLKIT else {}
    for name, tensor, mapped in stream_tensors(index):
        ours = plan[name]
        if name in buffers:
            _check_table(name, tensor, buffers[name], folder)
        if ours is None:
            continue
        module_name, _, attr = ours.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if isinstance(module, Q.QuantizedLinear) and attr == "weight":  # quantized as it is read
            if module_name in low_rank:  # the file holds the update merged in: quantize the weight without it
                lora_a, lora_b = low_rank[module_name]
                module.set_low_rank(*(t.to(device=place(ours), dtype=dtype) for t in (lora_a, lora_b)))  # checks shapes
                tensor = tensor.float() - lora_b.float() @ lora_a.float()
            module.set_weight(tensor, place(ours), prepare=not keep_portable)
            continue
        quantized_buffer = isinstance(module, Q.QuantizedLinear) and attr != "bias"
        target = dtype if tensor.is_floating_point() and not quantized_buffer else tensor.dtype
        moved = tensor.to(device=place(ours), dtype=target)
        if moved.device.type == "cpu" and moved.data_ptr() == tensor.data_ptr() and (mapped or moved.data_ptr() % 64):
            # Own, aligned memory: a mapped file's pages are handed back next, and safetensors'
            # buffers may sit at any address, which PyTorch's int8 kernel does not survive.
            moved = moved.clone()
        _assign(model, ours, moved)
    if tied:
        embeddings = model.language_model.embed_tokens.weight
        if isinstance(model.lm_head, Q.QuantizedLinear):
            model.lm_head.set_weight(embeddings.detach(), place("lm_head.weight"), prepare=not keep_portable)
        else:
            model.lm_head.weight = embeddings
    # Non-persistent buffers were created on the meta device: rebuild them for real.
    model.language_model.rotary_emb = LlamaRotaryEmbedding(config.text_config).to(place("language_model.rotary_emb"))
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if left:  # every tensor of the model must come from the file (never a random fill)
        raise CheckpointError(f"weights in {folder} left {len(left)} tensor(s) unset: {_summarise(left)}")
    if stored_q and not keep_portable:
        for module in model.modules():
            if isinstance(module, Q.QuantizedLinear):
                module.prepare()
    _set_generation_config(model, folder, kind)
    if bits is not None:
        setattr(model.config, Q.CONFIG_KEY, {"bits": bits, "group_size": group_size, "kept": kept,
                                             **({"in_int8": in_int8} if in_int8 else {}),
                                             **({"low_rank": {n: a.shape[0] for n, (a, _) in low_rank.items()}}
                                                if low_rank else {})})
    if device_map is not None:
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=place.device_map)
    return model.eval()


def _placement(model, device_map, device: torch.device, dtype: torch.dtype, max_memory):
    """name -> device for each tensor; with a device map, the longest matching module prefix."""
    if device_map is None:
        def place(name: str) -> torch.device:
            return device

        place.device_map = None
        return place
    try:
        from accelerate import infer_auto_device_map
    except ImportError:
        raise CheckpointError("device_map needs the accelerate package: pip install accelerate") from None
    if device_map == "auto":
        device_map = infer_auto_device_map(
            model, max_memory=max_memory if isinstance(max_memory, dict) else None, dtype=dtype,
            no_split_module_classes=["DecoderLayer", "VisionLayer", "AbstractorLayer"],
        )
    if "disk" in set(map(str, device_map.values())):
        raise CheckpointError("the model does not fit in the GPUs and the CPU together (device_map wants disk "
                              "offloading, which owlkit does not do); free memory or use a smaller dtype")
    prefixes = sorted(device_map, key=len, reverse=True)

    def place(name: str) -> torch.device:
        for prefix in prefixes:
            if prefix == "" or name == prefix or name.startswith(prefix + "."):
                value = device_map[prefix]
                return torch.device(f"cuda:{value}" if isinstance(value, int) else value)
        raise CheckpointError(f"device_map places no module holding {name}; give every module a device")

    place.device_map = device_map
    return place


def _set_generation_config(model, folder: Path, kind: str) -> None:
    text = model.config.text_config
    if kind == OWLKIT and (folder / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
        return
    # The official v1 outer GenerationConfig (sampling, top_k 3) is never used by the official
    # code either; both generations decode greedily unless asked otherwise.
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id or 0,
    )
