"""MM-DLM: diffusion language models (masked, GIDD+, hierarchical, latent/multimodal) as a library."""

__version__ = "0.1.0"
