"""Published models and their population parameters, each value with its source."""

from __future__ import annotations

from pbpk_models.errors import InputError

MODELS = {
    "psma-pbrpk": ("pbpk_models.library.psma", ("corrected", "published")),
    "sstr": ("pbpk_models.library.sstr", ("corrected",)),
}


def model_names() -> tuple[str, ...]:
    return tuple(MODELS)


def build_spec(name: str, variant: str | None = None):
    """The ModelSpec of a library model (``variant`` None: the model's default, first listed)."""
    import importlib

    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    module, variants = MODELS[name]
    variant = variant or variants[0]
    if variant not in variants:
        raise InputError(f"model {name} has variants {', '.join(variants)}, not {variant!r}")
    return importlib.import_module(module).build(variant)
