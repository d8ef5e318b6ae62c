"""``OwlForCausalLM``: both mPLUG-Owl generations as one transformers model.

Flow of one forward (shapes in docs/architecture.md):

1. ``expand_placeholders`` turns the ids (any placeholder convention) into the expanded layout;
2. the images go through the vision encoder and the abstractor (``encode_images``), giving
   ``tokens_per_image`` rows each;
3. text ids are embedded and the image rows are written into the image slots with one
   ``masked_scatter`` (images in order of appearance, row-major over the batch);
4. the decoder runs, with ``mm_token_type_ids`` (1 at image slots) routing the
   modality-adaptive module of mPLUG-Owl2;
5. ``lm_head`` gives logits over the expanded sequence; with ``labels`` the loss is the mean
   next-token cross-entropy over supervised positions.

``generate`` encodes the images once, hands the spliced embeddings to transformers'
``GenerationMixin`` (cache, sampling, stopping), and returns the prompt ids followed by the
new ids, as mPLUG-Owl2 does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from owlkit.config import IGNORE_INDEX, OwlConfig
from owlkit.errors import InputError, OwlError
from owlkit.models import cpu_decoding
from owlkit.models.abstractor import VisualAbstractor, WordProjector, visual_projector
from owlkit.models.decoder import OwlDecoder
from owlkit.models.feature_cache import FeatureCache
from owlkit.models.splice import Expanded, expand_placeholders
from owlkit.models.vision import VisionEncoder


#: Patch tokens per vision-encoder call at inference (see ``OwlForCausalLM.encode_images``).
INFERENCE_VISION_TOKENS = 1024


@dataclass
class OwlCausalLMOutput(CausalLMOutputWithPast):
    """Causal-LM output plus the expanded layout the logits refer to."""

    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    mm_token_type_ids: torch.Tensor | None = None


#: The output field that holds the cache: ``cache`` from transformers 5.24 on (which warns when an
#: output is built with the old name), ``past_key_values`` before.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _cache_argument(past_key_values, kwargs: dict):
    """The key/value cache, whichever name the caller used.

    ``transformers`` renamed the cache argument from ``past_key_values`` to ``cache`` in 5.24
    (its ``generate`` now passes ``cache=``; earlier 5.x releases pass ``past_key_values=``).
    Both are accepted, so the model works with every 5.x release; the output always carries it
    under the name the installed release reads back.
    """
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None:
        raise InputError("pass the key/value cache once, as cache or as past_key_values, not both")
    return past_key_values if past_key_values is not None else cache


class OwlPreTrainedModel(PreTrainedModel):
    config_class = OwlConfig
    config: OwlConfig
    base_model_prefix = "owl"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["DecoderLayer", "VisionLayer", "AbstractorLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.text_config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, LlamaRMSNorm):
            module.weight.fill_(1.0)
        elif type(module).__name__ == "VisionEmbeddings":
            module.cls_token.normal_(0.0, std)
            module.position_embedding.normal_(0.0, std)
        elif isinstance(module, WordProjector):  # visited after its layers: its own init wins
            module.reset_parameters()
        elif isinstance(module, VisualAbstractor):
            module.query_embeds.normal_(0.0, std)
            if getattr(module, "vit_eos", None) is not None:  # word tokens have none
                module.vit_eos.normal_(0.0, std)


class OwlForCausalLM(OwlPreTrainedModel, GenerationMixin):
    # Tied only when config.tie_word_embeddings (an LLM such as SmolLM2); the releases untie them.
    _tied_weights_keys = {"lm_head.weight": "language_model.embed_tokens.weight"}

    def __init__(self, config: OwlConfig):
        super().__init__(config)
        self.vision = VisionEncoder(config.vision_config)
        self.abstractor = visual_projector(config.abstractor_config, config.vision_config.fp32_layernorm)
        self.language_model = OwlDecoder(config.text_config, config.modality_adaptive)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    # -- transformers plumbing -------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        for module in (self.vision, self.abstractor, self.language_model):
            module.gradient_checkpointing = enable

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self._set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self._set_gradient_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.language_model.gradient_checkpointing

    #: Reads a model folder exactly: :func:`owlkit.load_model`, which :mod:`owlkit.checkpoints` puts
    #: here when imported (``owlkit.OwlForCausalLM`` and the Auto classes import it first). The
    #: model layer knows no file formats.
    folder_loader = None

    @classmethod
    def from_pretrained(cls, path, *args, dtype=None, device=None, **kwargs):
        """Load any supported folder exactly (see :func:`owlkit.load_model`); never random-fills."""
        if cls.folder_loader is None:
            raise OwlError("model folders are read by owlkit.checkpoints; import it first, or use owlkit.load_model")
        dtype = dtype if dtype is not None else kwargs.pop("torch_dtype", None)
        return cls.folder_loader(path, dtype=dtype, device=device, device_map=kwargs.pop("device_map", None),
                                 max_memory=kwargs.pop("max_memory", None))

    def optimize_for_cpu_decoding(self) -> "OwlForCausalLM":
        """Prepack the decoder for fast CPU decoding (inference only; see models/cpu_decoding.py)."""
        cpu_decoding.optimize_for_cpu_decoding(self)
        return self

    def save_pretrained(self, *args, **kwargs):
        if getattr(self, "_decoding_layout", None) == "onednn-packed":
            raise OwlError("this model was prepacked for CPU decoding and cannot be saved; load it again to save it")
        if kwargs.get("state_dict") is None:  # fused products' weights leave their joint storage
            kwargs["state_dict"] = cpu_decoding.savable_state_dict(self)
        return super().save_pretrained(*args, **kwargs)

    # -- images ------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, tokens_per_image, text hidden] (what replaces each placeholder).

        Without gradients, images go through in chunks of about ``INFERENCE_VISION_TOKENS``
        patch tokens: each image's result is the same, and a batch's activations stay small
        enough to be reused from the allocator and the caches instead of being freshly mapped
        (faster on the machines measured, benchmarks/generate.py's setting: docs/serving.md).
        """
        cache = getattr(self, "image_feature_cache", None)
        if cache is not None and not torch.is_grad_enabled() and not self.training:
            return cache.encode(pixel_values, self._encode_images)
        return self._encode_images(pixel_values)

    def enable_image_feature_cache(self, max_mb: float = 256.0):
        """Repeated images skip the vision encoder and abstractor at inference (models/feature_cache.py)."""
        self.image_feature_cache = FeatureCache(max_mb) if max_mb and max_mb > 0 else None
        return self.image_feature_cache

    def _encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        p = self.config.vision_config.patch_size
        grid = (pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)
        chunk = max(1, INFERENCE_VISION_TOKENS // (grid[0] * grid[1]))
        extra = {"rows": self.word_rows()} if self.config.abstractor_config.projector == "words" else {}
        if torch.is_grad_enabled() or pixel_values.shape[0] <= chunk:
            return self.abstractor(self.vision(pixel_values), grid_hw=grid, **extra)
        return torch.cat([self.abstractor(self.vision(part), grid_hw=grid, **extra) for part in pixel_values.split(chunk)])

    def word_rows(self) -> torch.Tensor:
        """The LLM's input-embedding rows a ``words`` projector mixes ([W, D]; all rows without ``word_ids``)."""
        weight = self.language_model.embed_tokens.weight
        ids = self.abstractor.word_ids
        return weight if ids is None else weight.index_select(0, torch.tensor(ids, device=weight.device))

    def embed_multimodal(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pad_side: str = "auto",
    ):
        """Expanded embeddings, attention mask, labels and modality ids for a batch."""
        cfg = self.config
        ex = expand_placeholders(input_ids, attention_mask, labels, cfg.tokens_per_image, cfg.image_token_id, pad_side)
        return self.embed_expanded(ex, pixel_values)

    def embed_expanded(self, ex: Expanded, pixel_values: torch.Tensor | None):
        """:meth:`embed_multimodal` of a batch already in the expanded layout (the training step
        expands each micro-batch once, counting its tokens there)."""
        cfg = self.config
        if pixel_values is not None and (pixel_values.ndim != 4 or pixel_values.shape[1] != cfg.vision_config.num_channels):
            raise InputError(
                f"pixel_values must have shape [images, {cfg.vision_config.num_channels}, H, W] "
                f"(all images of the batch in order), got {list(pixel_values.shape)}"
            )
        n_given = 0 if pixel_values is None else int(pixel_values.shape[0])
        if ex.num_images != n_given:
            raise InputError(
                f"input_ids hold {ex.num_images} image placeholder(s) but {n_given} image(s) were given; "
                "pass exactly one pixel_values row per placeholder, in order of appearance"
            )
        vocab = cfg.text_config.vocab_size
        if bool((ex.input_ids >= vocab).any()):
            raise InputError(f"input_ids hold ids >= the vocabulary size {vocab}")
        embeds = self.language_model.embed_tokens(ex.input_ids)
        if ex.num_images:
            feats = self.encode_images(pixel_values).to(embeds.dtype)
            embeds = embeds.masked_scatter(ex.image_mask.unsqueeze(-1).expand_as(embeds), feats.reshape(-1))
        mm = ex.image_mask.long() if cfg.modality_adaptive else None
        return embeds, ex.attention_mask, ex.labels, mm

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool = True,
        **kwargs,
    ) -> OwlCausalLMOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids and inputs_embeds")
        past_key_values = _cache_argument(past_key_values, kwargs)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if inputs_embeds is None:
            if past_len == 0 or pixel_values is not None or bool((input_ids < 0).any()):
                inputs_embeds, attention_mask, labels, mm_token_type_ids = self.embed_multimodal(
                    input_ids, pixel_values, attention_mask, labels
                )
            else:  # a decoding step: text only
                inputs_embeds = self.language_model.embed_tokens(input_ids)
        hidden, past_key_values = self.language_model(
            inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            mm_token_type_ids=mm_token_type_ids,
            past_key_values=past_key_values,
            use_cache=bool(use_cache),
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden.reshape(-1, hidden.shape[-1])).view(*hidden.shape[:2], -1)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=IGNORE_INDEX,
            )
        return OwlCausalLMOutput(
            loss=loss,
            logits=logits,
            **{_CACHE_FIELD: past_key_values if use_cache else None},
            attention_mask=attention_mask,
            labels=labels,
            mm_token_type_ids=mm_token_type_ids,
        )

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        """Generate after the prompt; returns ``[prompt ids | new ids]`` (or a dict output).

        The prompt may use any placeholder convention and any padding side: it is expanded
        with the room filled on the left, positions follow the attention mask and padded keys
        stay masked at every step, so a batch gives the same ids as its samples one by one.
        """
        if input_ids is None or "inputs_embeds" in kwargs:
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        embeds, mask, _, mm = self.embed_multimodal(input_ids, pixel_values, attention_mask, pad_side="generate")
        extra = {"mm_token_type_ids": mm} if mm is not None else {}
        out = super().generate(inputs_embeds=embeds, attention_mask=mask, **extra, **kwargs)
        if isinstance(out, torch.Tensor):
            return torch.cat([input_ids.to(out.device), out], dim=1)
        out.sequences = torch.cat([input_ids.to(out.sequences.device), out.sequences], dim=1)
        return out


def _register_auto_models() -> None:
    """AutoModel / AutoModelForCausalLM know OwlForCausalLM once this module is imported."""
    for auto in (AutoModelForCausalLM, AutoModel):
        auto.register(OwlConfig, OwlForCausalLM, exist_ok=True)


_register_auto_models()
