"""The model's configurations for both mPLUG-Owl generations, and the named presets.

One model class serves mPLUG-Owl (v1) and mPLUG-Owl2; what differs between them is data here:

* :class:`OwlVisionConfig`: the CLIP-style ViT (Megatron-style fused, per-head QKV).
* :class:`OwlAbstractorConfig`: the visual abstractor. ``pos_embed="none"`` is v1 (no position
  tables), ``pos_embed="sincos"`` is v2 (1-D sin-cos table on the queries, 2-D table with a zero
  CLS row on the image tokens).
* ``text_config``: a plain transformers :class:`~transformers.LlamaConfig` for the decoder.
* :class:`OwlConfig`: the composition, with ``modality_adaptive`` switching on mPLUG-Owl2's
  modality-adaptive module (per-modality norms and key/value projections in every decoder layer).

Attribute names follow the HF conventions (``hidden_size``, ``num_attention_heads`` ...).
Named presets live in :data:`PRESETS` and are built with :meth:`OwlConfig.from_preset`.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, LlamaConfig, PreTrainedConfig

from owlkit.config import IMAGE_TOKEN_INDEX
from owlkit.errors import ConfigError


#: What turns the encoder's tokens into decoder positions (``abstractor_config.projector``).
PROJECTORS = ("abstractor", "linear", "words")


class OwlVisionConfig(PreTrainedConfig):
    """CLIP ViT as both official generations build it (pre-LN, CLS token, post-LN on all tokens)."""

    model_type = "owlkit_vision"
    base_config_key = "vision_config"

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-6
    use_cls_token: bool = True
    use_post_layernorm: bool = True
    #: v1 wraps every vision/abstractor LayerNorm in an fp32 upcast; v2 uses plain LayerNorm.
    fp32_layernorm: bool = False

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid_size**2 + (1 if self.use_cls_token else 0)


class OwlAbstractorConfig(PreTrainedConfig):
    """The visual abstractor: learnable queries attending to [queries ; image tokens]."""

    model_type = "owlkit_abstractor"
    base_config_key = "abstractor_config"

    hidden_size: int = 1024
    num_hidden_layers: int = 6
    num_attention_heads: int = 16
    intermediate_size: int = 2816
    num_queries: int = 64
    encoder_hidden_size: int = 1024
    #: eps of ffn_ln (the LayerNorm inside the SwiGLU); norm1/normk/norm2 use ``attn_norm_eps``.
    layer_norm_eps: float = 1e-6
    attn_norm_eps: float = 1e-5
    attention_probs_dropout_prob: float = 0.0
    #: "none" (mPLUG-Owl) or "sincos" (mPLUG-Owl2).
    pos_embed: str = "none"
    #: Side of the patch grid of the configured image size (v2 ``grid_size``).
    grid_size: int = 16
    #: Whether the image tokens start with a CLS row (gets an all-zero position row).
    use_cls_token: bool = True
    #: Output width (the language model's hidden size); set by OwlConfig.
    text_hidden_size: int = 4096
    #: "abstractor" (both papers: ``num_queries`` learnable queries + ``vit_eos``) or "linear"
    #: (LLaVA's choice, owlkit's own for comparisons: every patch token through one linear
    #: layer, no CLS row, no queries; no official format holds it), or "words" (owlkit's own:
    #: the queries' outputs are read as words of the LLM, each query a softmax over the LLM's
    #: embedding rows ``word_ids`` mixing those rows; no ``vit_eos``; models/abstractor.py).
    projector: str = "abstractor"
    #: "words" projector: the rows of the LLM's embedding the word tokens are made of (token
    #: ids); None: the whole vocabulary.
    word_ids: list[int] | None = None


class OwlConfig(PreTrainedConfig):
    """The whole model: vision encoder, abstractor and LLaMA decoder."""

    model_type = "owlkit"
    sub_configs = {
        "vision_config": OwlVisionConfig,
        "abstractor_config": OwlAbstractorConfig,
        "text_config": LlamaConfig,
    }

    vision_config: Any = None
    abstractor_config: Any = None
    text_config: Any = None
    #: 1 = mPLUG-Owl, 2 = mPLUG-Owl2 (selects templates, preprocessing and export format).
    owl_version: int = 2
    modality_adaptive: bool = True
    #: owlkit's own image placeholder token in the vocabulary (one per image), or None.
    image_token_id: int | None = None
    #: Aspect-ratio handling of the image processor ("resize", "pad", "crop", "stretch").
    image_aspect_ratio: str | None = None
    #: The conversation template the folder's processor uses: "mplug_owl", "mplug_owl2",
    #: "vicuna_v1", or "chat_template" (the tokenizer's own); None: the generation's official one.
    conversation_template: str | None = None
    tie_word_embeddings: bool = False
    #: The instruction the model learned to answer short with (LLaVA-1.5 and mPLUG-Owl2 append
    #: "Answer the question using a single word or phrase." to their short-answer VQA data):
    #: ``owl eval synth`` appends it to the world's questions. None: the questions as they are.
    short_answer_prompt: str | None = None
    #: Layers that int4 quantization keeps at int8, named by a component of their name (e.g.
    #: "visual": the modality-adaptive visual branches), besides the LM head: the layers whose
    #: rounding this model's answers measurably do not survive (owl-small: docs/performance.md).
    int8_in_int4: list[str] | None = None
    #: The int4 group size this model quantizes best in, used when none is asked for (default
    #: 128): a base whose weights already sit on a 4-bit grid of groups of 32 (a Q4_0/Q4_1 GGUF,
    #: owl-small's) rounds back onto it exactly in groups of 32, not 128 (docs/performance.md).
    int4_group_size: int | None = None

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = OwlVisionConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = OwlVisionConfig(**self.vision_config)
        if self.abstractor_config is None:
            self.abstractor_config = OwlAbstractorConfig()
        elif isinstance(self.abstractor_config, dict):
            self.abstractor_config = OwlAbstractorConfig(**self.abstractor_config)
        if self.text_config is None:
            self.text_config = LlamaConfig()
        elif isinstance(self.text_config, dict):
            text = {k: v for k, v in self.text_config.items() if k != "model_type"}
            self.text_config = LlamaConfig(**text)
        # The abstractor projects into the decoder's width.
        self.abstractor_config.text_hidden_size = self.text_config.hidden_size
        if self.abstractor_config.projector not in PROJECTORS:
            raise ConfigError(f"abstractor_config.projector {self.abstractor_config.projector!r} is not one of "
                              f"{', '.join(PROJECTORS)}")
        words = self.abstractor_config.word_ids
        if words is not None:
            vocab = self.text_config.vocab_size
            if not words or any(not isinstance(w, int) or not 0 <= w < vocab for w in words):
                raise ConfigError(f"abstractor_config.word_ids must be token ids below the vocabulary size {vocab} "
                                  "(or null: the whole vocabulary)")
        super().__post_init__(**kwargs)

    @property
    def tokens_per_image(self) -> int:
        """Decoder positions per image: the abstractor's queries plus the learned ``vit_eos``;
        with a linear projector, one per patch of the configured image size; with word tokens,
        one per query."""
        a = self.abstractor_config
        if a.projector == "linear":
            return a.grid_size**2
        if a.projector == "words":
            return a.num_queries
        return a.num_queries + 1

    @property
    def placeholder_id(self) -> int:
        """The id one image takes in ``input_ids``: ``image_token_id``, else ``-200``.

        The one rule for the placeholder: training data, the processor (``owl chat``, the
        server, ``owl eval``) and the model all follow the model config, never the tokenizer.
        """
        return IMAGE_TOKEN_INDEX if self.image_token_id is None else int(self.image_token_id)

    @property
    def vocab_size(self) -> int:  # convenient for generation utilities
        return self.text_config.vocab_size

    def get_text_config(self, *args, **kwargs):
        return self.text_config

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "OwlConfig":
        """Build a named preset (see :data:`PRESETS`); ``overrides`` set top-level keys."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
        spec = copy.deepcopy(PRESETS[name])
        spec.update(overrides)
        return cls(**spec)


def _preset(version: int, vision: dict, abstractor: dict, text: dict, **top) -> dict:
    grid = vision["image_size"] // vision.get("patch_size", 14)
    abstractor = {
        "pos_embed": "sincos" if version == 2 else "none",
        "grid_size": grid,
        "encoder_hidden_size": vision["hidden_size"],
        **abstractor,
    }
    vision = {"fp32_layernorm": version == 1, **vision}
    text = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False, **text}
    return {
        "owl_version": version,
        "modality_adaptive": version == 2,
        "image_aspect_ratio": "resize" if version == 2 else "stretch",
        "vision_config": vision,
        "abstractor_config": abstractor,
        "text_config": text,
        **top,
    }


_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14)
_ABSTRACTOR_7B = dict(hidden_size=1024, num_hidden_layers=6, num_attention_heads=16, intermediate_size=2816, num_queries=64)
_LLAMA_7B = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    rms_norm_eps=1e-6, max_position_embeddings=2048,
)

#: Named presets. The 7B ones are the released sizes; ``small`` is the benchmark size of the
#: issues; ``test-*`` are tiny random models for unit tests.
PRESETS: dict[str, dict] = {
    "owl2-llama2-7b": _preset(2, dict(_VIT_L14, image_size=448), _ABSTRACTOR_7B, dict(_LLAMA_7B, max_position_embeddings=4096)),
    "owl-llama-7b": _preset(1, dict(_VIT_L14, image_size=224), _ABSTRACTOR_7B, _LLAMA_7B),
    "small": _preset(
        2,
        dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, image_size=224),
        dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=704, num_queries=64),
        dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
             max_position_embeddings=2048),
    ),
    # The bundled model (owlkit/zoo/tiny.py): 112 px images, GQA decoder; vocab set by its tokenizer.
    "owl-tiny": _preset(
        2,
        dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, image_size=112),
        dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=352, num_queries=16),
        dict(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512),
    ),
    "test-owl2": _preset(
        2,
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56),
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=88, num_queries=4),
        dict(vocab_size=256, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256),
    ),
    "test-owl1": _preset(
        1,
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56),
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=88, num_queries=4),
        dict(vocab_size=256, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256),
    ),
}


def _register_auto_config() -> None:
    """AutoConfig knows owlkit's configs once this module is imported (see owlkit._auto_hook)."""
    for cfg in (OwlConfig, OwlVisionConfig, OwlAbstractorConfig):
        AutoConfig.register(cfg.model_type, cfg, exist_ok=True)


_register_auto_config()
