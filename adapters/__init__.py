"""Adapters that implement tiec's split protocol for real models (installed as ``tiec.adapters``).

Each adapter imports its framework lazily and names the missing extra in its error. The diffusers,
timm and k-diffusion adapters are tracked in their own issues; this package is their home.
"""

__all__: list[str] = []
