"""Text + image MMDiT at toy scale (spec §6, [rec]: a proof of concept with proper processes): a caption
stream and an image stream joined by the same blocks as `mmdlm.models.mmdit`.

    continuous  image (B, C, S, S) in [-1, 1] -> (S/p)^2 patch tokens (a p x p stride-p patch embedding,
                i.e. a Linear of p x p x C pixels, + learned positions); the head predicts the Gaussian
                target (eps, v or x0) per patch -> (B, C, S, S)
    discrete    pixels (B, C*S*S) grey levels (`quantize`) -> the same (S/p)^2 patch tokens: each of a
                patch's p x p x C levels is embedded (d = max(8, H / (p p C)) wide, its own table per slot
                through the concatenation) and a Linear maps the concatenation to H; the head gives
                logits for every pixel of the patch -> (B, C*S*S, V_pixel). p = 1 is one token per pixel.

Unlike the original toy trainers, the image encoder is not a learnable target (the diffusion runs on the
pixels themselves, so nothing can collapse), time is one fused vector of both modalities' times, and the
caption has its own token head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdlm.config.latent import ImageMMDiTConfig, MMDiTConfig
from mmdlm.models.mmdit import MMDiTBlock, TimeConditioning, joint_key_mask


def quantize(image: Tensor, levels: int) -> Tensor:
    """(B, C, S, S) floats in [-1, 1] -> (B, C*S*S) int64 levels 0..levels-1, through uint8 (integer
    arithmetic, round half up): u = round((x + 1) * 127.5), level = round(u * (levels - 1) / 255)
    (levels = 256 is the uint8 value itself)."""
    u = torch.floor((image.float().clamp(-1, 1) + 1) * 127.5 + 0.5).long()
    return ((u * (levels - 1) * 2 + 255) // 510).flatten(1)


def dequantize(pixels: Tensor, levels: int, shape: tuple[int, ...]) -> Tensor:
    """(B, C*S*S) levels -> (B, *shape) floats in [-1, 1]: u = round(level * 255 / (levels - 1)), the
    inverse of `quantize` on its grid (the digits' 0..16 come back exactly at levels = 17)."""
    u = (pixels.long() * 510 + (levels - 1)) // (2 * (levels - 1))
    return (u.float() / 127.5 - 1).reshape(len(pixels), *shape)


def patchify(image: Tensor, p: int) -> Tensor:
    """(B, C, S, S) -> (B, (S/p)^2, p*p*C), row-major patches."""
    B, C, S, _ = image.shape
    x = image.reshape(B, C, S // p, p, S // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (S // p) ** 2, p * p * C)


def unpatchify(tokens: Tensor, p: int, channels: int, size: int) -> Tensor:
    B = tokens.shape[0]
    n = size // p
    x = tokens.reshape(B, n, n, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, size, size)


class ImageMMDiT(nn.Module):
    """forward(text (B, L), image (B, C, S, S) float | (B, S*S) long, text_t (B,), image_t (B,),
    attention_mask (B, L) | None, drop_text (B,) | None, drop_image (B,) | None)
    -> (text logits (B, L, V_text), image output (continuous (B, C, S, S) | discrete (B, S*S, V_pixel)))."""

    def __init__(self, config: ImageMMDiTConfig, text_rows: int, pixel_rows: int) -> None:
        super().__init__()
        self.config = config
        H = config.hidden_size
        blocks = MMDiTConfig(
            hidden_size=H, n_blocks=config.n_blocks, n_heads=config.n_heads, cond_dim=config.cond_dim,
            max_seq_len=config.max_seq_len, latent_dim=1, qk_norm=config.qk_norm, time_scale=config.time_scale,
        )  # fmt: skip
        self.token_embed = nn.Embedding(text_rows, H)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        self.text_position = nn.Parameter(torch.randn(1, config.max_seq_len, H) * 0.02)
        if config.variant == "continuous":
            n_tokens = (config.image_size // config.patch_size) ** 2
            patch = config.patch_size**2 * config.channels
            self.image_in = nn.Linear(patch, H)
            self.image_head = nn.Linear(H, patch)
        else:
            n_tokens = config.num_image_tokens
            slots = config.patch_size**2 * config.channels
            width = max(8, H // slots)
            self.pixel_embed = nn.Embedding(pixel_rows, width)
            nn.init.normal_(self.pixel_embed.weight, std=0.02)
            self.image_in = nn.Linear(slots * width, H)
            self.image_head = nn.Linear(H, slots * pixel_rows)
            self.pixel_rows = pixel_rows
        self.image_position = nn.Parameter(torch.randn(1, n_tokens, H) * 0.02)
        self.time = TimeConditioning(config.cond_dim, config.time_scale)
        self.blocks = nn.ModuleList(MMDiTBlock(blocks, i) for i in range(config.n_blocks))
        self.final_norm = nn.ModuleList(nn.RMSNorm(H) for _ in range(2))
        self.text_head = nn.Linear(H, text_rows)
        for layer in (self.text_head, self.image_head):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        # caption-length histogram of the training data; samplers draw caption lengths from it
        self.register_buffer("length_counts", torch.zeros(config.max_seq_len + 1))

    def forward(
        self,
        text: Tensor,
        image: Tensor,
        text_t: Tensor,
        image_t: Tensor,
        attention_mask: Tensor | None = None,
        drop_text: Tensor | None = None,
        drop_image: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        cfg = self.config
        B, L = text.shape
        if L > cfg.max_seq_len:
            raise ValueError(f"caption length {L} exceeds model.max_seq_len={cfg.max_seq_len}")
        c = F.silu(self.time(text_t, image_t))
        text_state = self.token_embed(text) + self.text_position[:, :L]
        if cfg.variant == "continuous":
            if image.shape[1:] != (cfg.channels, cfg.image_size, cfg.image_size):
                raise ValueError(
                    f"image shape {tuple(image.shape[1:])} does not match the model's "
                    f"(model.channels, model.image_size, model.image_size) = "
                    f"{(cfg.channels, cfg.image_size, cfg.image_size)}"
                )
            image_state = self.image_in(patchify(image, cfg.patch_size).to(text_state.dtype))
        else:
            if image.shape[1:] != (cfg.channels * cfg.image_size**2,):
                raise ValueError(
                    f"pixel tokens {tuple(image.shape[1:])} do not match the model's "
                    f"model.channels * model.image_size**2 = {cfg.channels * cfg.image_size**2}"
                )
            grid = image.reshape(B, cfg.channels, cfg.image_size, cfg.image_size)
            slots = patchify(grid, cfg.patch_size)  # (B, N, p*p*C) levels
            image_state = self.image_in(self.pixel_embed(slots).flatten(2))
        states = [text_state, image_state + self.image_position]
        key_mask = joint_key_mask(
            attention_mask, B, L, states[1].shape[1], drop_text, drop_image, text.device
        )
        for block in self.blocks:
            states = block(states, c, key_mask)
        logits = self.text_head(self.final_norm[0](states[0]))
        out = self.image_head(self.final_norm[1](states[1]))
        if cfg.variant == "discrete":  # (B, N, p*p*C*V) -> (B, C*S*S, V) in pixel order
            V = self.pixel_rows
            per_slot = (
                out.reshape(B, out.shape[1], -1, V).permute(0, 3, 1, 2).reshape(B * V, out.shape[1], -1)
            )
            grid = unpatchify(per_slot, cfg.patch_size, cfg.channels, cfg.image_size)
            return logits, grid.reshape(B, V, -1).transpose(1, 2)
        if cfg.variant == "continuous":
            out = unpatchify(out, cfg.patch_size, cfg.channels, cfg.image_size)
        return logits, out
