"""CPU decoding layouts of the decoder's matrices: placed for one-row products (the default of
``Owl.load``), or all of them prepacked for oneDNN (opt-in).

**Placed for decoding** (:func:`arrange_for_decoding`). A decoding step multiplies one row per
sample by every matrix, so it streams the weights, and how fast depends on their layout. With
PyTorch's row-major ``[out, in]`` weight a matrix with few inputs streams slowly on some CPUs: on
a 2-core AVX2 machine (2026-12), a 1,536 x 576 matrix at 7 GB/s and SmolLM2's 49,152 x 576 LM
head at 9.3 GB/s, against 11.5 and 17.2 GB/s column-major; a matrix with more inputs than
outputs (576 x 1,536) is the other way round. And several short products of one input cost
more than one long one. So each decoder layer's text-side matrices are copied into one storage,
in the order a step reads them: the query, text key and text value projections side by side as
one column-major product, the output projection row-major, gate and up as one column-major
product, down row-major; the LM head column-major. Each ``nn.Linear`` keeps its weight as a view
(the model trains, saves and loads as before); the decoder runs a fused product only without
gradients and while its parts are unchanged (:class:`~owlkit.models.decoder.FusedProduct`).
docs/performance.md has the measurements. The layouts round differently from the checkpoint's
(a few units in the last place; up to 1e-4 on large logits), so a build that must give the
same bytes as before loads with ``decoding_layout="row-major"``.

A decoding step multiplies one row per sample by every decoder matrix, so it is bound by how
fast the weights stream from memory. Whether oneDNN's prepacked ``linear`` streams them faster
than PyTorch's default path (MKL ``sgemm`` on the row-major ``[out, in]`` weight) depends on
the machine: on the ones measured, ``generate`` on the ``small`` preset decoded faster with the
row-major layout, so ``Owl.load`` keeps it, and packing is asked for with
``model.optimize_for_cpu_decoding()`` (``benchmarks/inference.py`` measures both layouts).

Packing replaces each ``nn.Linear`` of the decoder and the LM head by a :class:`PackedLinear`
holding only the packed weight, so memory does not grow. Two rewrites go with it: each LLaMA
MLP's gate and up projections become one packed product (:class:`PackedGatedMLP`: one pass
over both matrices instead of two), and the vision MLPs' QuickGELU becomes one fused SiLU with
its 1.702 moved into the weights (:func:`fold_quick_gelu`). All of it keeps the numbers up to
float rounding (tests/test_model_correctness.py).

The packed model is for inference: it cannot be trained, moved to another device or saved
(``save_pretrained`` refuses). Where oneDNN is unavailable, :func:`optimize_for_cpu_decoding`
falls back to storing the weights column-major.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import QuickGELUActivation

from owlkit.models.decode_step import StepPlan
from owlkit.models.decoder import DecoderLayer, DecoderMLP, FusedProduct, ModalitySwitch

_BATCH_HINT = 8  # oneDNN's packing hint; the packed weight serves any batch size


class PackedLinear(nn.Module):
    """``nn.Linear`` with a oneDNN-packed weight (inference only)."""

    def __init__(self, *linears: nn.Linear):
        """Pack one linear, or several of the same input as one product (outputs side by side)."""
        super().__init__()
        self.in_features = linears[0].in_features
        self.out_features = sum(lin.out_features for lin in linears)
        with torch.no_grad():
            weight = torch.cat([lin.weight for lin in linears]) if len(linears) > 1 else linears[0].weight
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _BATCH_HINT)
            bias = None
            if any(lin.bias is not None for lin in linears):
                bias = torch.cat([lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
                                  for lin in linears])
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


class PackedGatedMLP(nn.Module):
    """LLaMA's MLP, ``down(act(gate(x)) * up(x))``, with gate and up as one packed product.

    A decoding step then streams both matrices in one call instead of two: fewer, longer
    products, which is what the memory-bound batch-of-rows case wants.
    """

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.intermediate = mlp.gate_proj.out_features
        self.gate_up = PackedLinear(mlp.gate_proj, mlp.up_proj)
        self.down_proj = PackedLinear(mlp.down_proj)
        self.act_fn = mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.intermediate, dim=-1)
        hidden = self.act_fn(gate)
        hidden.mul_(up)  # in place: one activation-sized buffer fewer to allocate per layer
        return self.down_proj(hidden)


_QUICK_GELU = 1.702


def fold_quick_gelu(model) -> int:
    """Rewrite the vision MLPs' ``x * sigmoid(1.702 x)`` as one fused SiLU; returns how many.

    ``fc2(q(fc1 x))`` with ``q(z) = z sigmoid(1.702 z) = silu(1.702 z) / 1.702`` equals
    ``(fc2 / 1.702)(silu((1.702 fc1) x))``: the scale moves into the weights, and three passes
    over the activations (scale, sigmoid, product) become one. Same numbers up to rounding.
    """
    folded = 0
    for module in model.vision.modules():
        if isinstance(getattr(module, "act", None), QuickGELUActivation) and hasattr(module, "fc1"):
            module.fc1.weight.data.mul_(_QUICK_GELU)
            if module.fc1.bias is not None:
                module.fc1.bias.data.mul_(_QUICK_GELU)
            module.fc2.weight.data.div_(_QUICK_GELU)
            module.act = nn.SiLU(inplace=True)  # packed models are inference-only: fc1's output is not kept
            folded += 1
    return folded


def _packing_works() -> bool:
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        probe = nn.Linear(16, 24)
        x = torch.randn(3, 16)
        with torch.no_grad():
            return torch.allclose(PackedLinear(probe)(x), probe(x), atol=1e-5)
    except Exception:  # an op missing or failing in this torch build
        return False


def _linears(model):
    modules = [model.language_model]
    for root in modules:
        for parent in root.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    yield parent, name, child
    yield model, "lm_head", model.lm_head


LAYOUTS = ("auto", "row-major")

_ALIGN = 16  # floats: each matrix in a layer's storage starts on a 64-byte boundary


def _placeable(linears: list) -> bool:
    first = linears[0]
    return all(isinstance(lin, nn.Linear) and lin.bias is None and lin.in_features == first.in_features
               and lin.weight.device.type == "cpu" and lin.weight.dtype == torch.float32
               for lin in linears)


def _text_branch(attention: nn.Module, name: str) -> tuple[nn.Module, str]:
    module = getattr(attention, name)
    return (module, "text") if isinstance(module, ModalitySwitch) else (attention, name)


def _groups(layer) -> list[tuple[nn.Module | None, str | None, list[tuple[nn.Module, str]]]]:
    """A decoder layer's text-side products in the order a decoding step runs them: (module that
    holds the fused product, its attribute, the linears side by side)."""
    attn, mlp = layer.self_attn, layer.mlp
    groups = [(attn, "fused_qkv", [(attn, "q_proj"), _text_branch(attn, "k_proj"), _text_branch(attn, "v_proj")]),
              (None, None, [(attn, "o_proj")])]
    if isinstance(mlp, DecoderMLP):
        groups += [(mlp, "fused_gate_up", [(mlp, "gate_proj"), (mlp, "up_proj")]), (None, None, [(mlp, "down_proj")])]
    return groups


def _place(groups) -> int:
    """Copy each group's weights into one storage (the layer's), side by side, and make them views of it: a
    group with more outputs than inputs column-major (one row of a decoding step streams those
    faster), the others row-major. Groups of several linears become :class:`FusedProduct`."""
    groups = [(holder, attr, parts, [getattr(p, n) for p, n in parts]) for holder, attr, parts in groups]
    groups = [g for g in groups if _placeable(g[3]) and (g[0] is None or getattr(g[0], g[1]) is None)]
    sizes = [-(-sum(lin.weight.numel() for lin in linears) // _ALIGN) * _ALIGN for *_, linears in groups]
    if not groups:
        return 0
    storage, start = torch.empty(sum(sizes)), 0
    with torch.no_grad():
        for (holder, attr, parts, linears), size in zip(groups, sizes):
            n_in, n_out = linears[0].in_features, sum(lin.out_features for lin in linears)
            region = storage[start:start + n_in * n_out]
            start += size
            if n_out > n_in:  # [in, out] row-major = [out, in] column-major
                block = region.view(n_in, n_out)
                torch.cat([lin.weight.detach().t() for lin in linears], dim=1, out=block)
                joint, column = block.t(), 0
                for lin in linears:
                    lin.weight.data = block[:, column:column + lin.out_features].t()
                    column += lin.out_features
            else:
                joint = region.view(n_out, n_in)
                torch.cat([lin.weight.detach() for lin in linears], dim=0, out=joint)
                row = 0
                for lin in linears:
                    lin.weight.data = joint[row:row + lin.out_features]
                    row += lin.out_features
            if holder is not None:
                setattr(holder, attr, FusedProduct(joint, tuple(lin.out_features for lin in linears), tuple(
                    (parent, name, lin, lin.weight.data_ptr()) for (parent, name), lin in zip(parts, linears))))
    return len(groups)


def arrange_for_decoding(model) -> int:
    """``Owl.load``'s default layout of a float32 CPU decoder (module doc); returns how many
    products were placed. Each decoder layer's text-side matrices go into one storage in the
    order a step reads them; the query with the text key and value, and gate with up, become
    one product each (:class:`~owlkit.models.decoder.FusedProduct`); the LM head gets a storage
    of its own, column-major; one-position steps run as a flat loop over the placed tensors
    and any quantized layers' kernels (:class:`~owlkit.models.decode_step.StepPlan`). Every linear keeps its own weight, as a view: the model trains,
    saves (:func:`savable_state_dict`) and loads as before, and the decoder takes the separate
    products whenever a part changes. Layers already placed, quantized or with biases are left
    as they are. A tied LM head shares its storage with the embedding table, whose row lookups
    work on either layout."""
    if getattr(model, "_arranged_for_decoding", False):
        return 0
    placed = sum(_place(_groups(layer)) for layer in model.language_model.layers if isinstance(layer, DecoderLayer))
    placed += _place([(None, None, [(model, "lm_head")])])
    model.language_model.step_plan = StepPlan.build(model.language_model)
    model._arranged_for_decoding = True
    return placed


def savable_state_dict(model) -> dict[str, torch.Tensor] | None:
    """The state dict with every weight that is a column-major or partial view (of a layer's storage)
    copied into a tensor of its own (safetensors writes neither interleaved views nor shared
    storage); a tensor held under several names (a tied LM head) stays one tensor. None when
    nothing needs it."""
    def own(t: torch.Tensor) -> bool:
        return t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()

    state = model.state_dict()
    if all(own(v) for v in state.values()):
        return None
    copies: dict[tuple, torch.Tensor] = {}
    for name, tensor in state.items():
        if not own(tensor):
            key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
            state[name] = copies.setdefault(key, tensor.clone(memory_format=torch.contiguous_format))
    return state


def optimize_for_cpu_decoding(model) -> str:
    """Pack (or, failing that, transpose) the decoder's matrices; returns the layout used."""
    if getattr(model, "_decoding_layout", None):
        return model._decoding_layout
    with torch.no_grad():
        if model.device.type == "cpu" and model.dtype == torch.float32 and _packing_works():
            for parent in list(model.language_model.modules()):
                for name, child in list(parent.named_children()):
                    if all(hasattr(child, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
                        setattr(parent, name, PackedGatedMLP(child))
            for parent, name, linear in list(_linears(model)):
                setattr(parent, name, PackedLinear(linear))
            layout = "onednn-packed"
            fold_quick_gelu(model)
        else:
            for _, _, linear in _linears(model):
                if isinstance(linear, nn.Linear) and linear.weight.is_contiguous():
                    linear.weight.data = linear.weight.data.t().contiguous().t()
            layout = "column-major"
    model._decoding_layout = layout
    return layout
