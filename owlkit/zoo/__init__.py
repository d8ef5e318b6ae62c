"""The bundled models' builds and the procedural world they learn from.

``world/``: the synthetic visual world (scenes, images, questions, files); ``tiny``: the
owl-tiny build (``owl tiny build``); ``tiny_vision``: its vision pre-training;
``synth_eval``: held-out evaluation on the world (``owl eval synth``); ``small``: the
owl-small build (``owl small build``); ``bundled``: the bundled models by name;
``language_check``: whether a model still speaks its LLM's language.
"""
