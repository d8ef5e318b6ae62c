"""owlkit's classes in transformers' Auto classes: importing this module registers them.

The registration itself sits at the end of :mod:`owlkit.config.model` (AutoConfig) and
:mod:`owlkit.models.owl` (AutoModel, AutoModelForCausalLM); ``import owlkit`` arranges for it
to happen at the first Auto lookup of an owlkit type (:mod:`owlkit._auto_hook`).
"""

import owlkit.config.model  # noqa: F401
import owlkit.models.owl  # noqa: F401
