"""Networks: plain nn.Modules that map token ids (and a time, for diffusion) to logits; no loss, no sampler."""
