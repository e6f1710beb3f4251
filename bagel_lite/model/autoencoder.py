"""The FLUX autoencoder: pixels <-> 16-channel latents at 1/8 resolution.

BAGEL never generates pixels. It generates *latents* of this frozen autoencoder and lets the decoder paint
them. Encoder and decoder are convolutional U-Net halves made of ResNet blocks, with one self-attention
block at the lowest resolution.

``encode`` samples the posterior (mean + std * noise, as the official code does) and maps it to the scale
the LLM sees: ``z = scale * (z - shift)``. ``decode`` undoes that map before the decoder. Module names
mirror the keys of ``ae.safetensors`` (``encoder.down.0.block.0.conv1.weight`` ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AEConfig


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x). A channels-last tensor (what ``fast_layout`` makes for ``encode`` / ``decode`` on the CPU)
    takes the fused kernel, ``F.silu`` (a 512x512 decode 0.96 s -> 0.80 s); the default layout, in which
    micro-BAGEL's trainer calls the encoder and decoder, keeps the two-operation form the shipped micro
    autoencoder was trained with, so that the trainer computes the bits it computed then (the two forms differ in
    the last bits; bits are the same only on the same kind of CPU)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return F.silu(x)
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions, with 1x1 convs as projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        x_norm = self.norm(x)

        def tokens(t):  # (b, c, h, w) -> (b, 1, h*w, c)
            return t.reshape(b, c, h * w).transpose(1, 2)[:, None]

        out = F.scaled_dot_product_attention(tokens(self.q(x_norm)), tokens(self.k(x_norm)), tokens(self.v(x_norm)))
        out = out[:, 0].transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right and bottom only, then stride 2


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: a list of ResNet blocks, then an optional resampling (key names of FLUX)."""

    def __init__(self, channels_in: int, channels_out: int, num_blocks: int):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(channels_in if i == 0 else channels_out, channels_out) for i in range(num_blocks)
        )
        self.attn = nn.ModuleList()  # empty in FLUX, kept for the module tree


class Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: AEConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]  # e.g. 128, 256, 512, 512
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        channels = cfg.ch
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            resample = None if last else Downsample(width)  # made before the level's blocks (a seeded model's order)
            level = Level(channels, width, cfg.num_res_blocks)
            if resample is not None:
                level.downsample = resample  # FLUX's key: encoder.down.{i}.downsample
            self.down.append(level)
            channels = width
        self.mid = Mid(channels)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, 2 * cfg.z_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x):
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)  # (B, ch * ch_mult[-1], H/8, W/8)
        return self.conv_out(swish(self.norm_out(h)))  # (B, 2 * z_channels, H/8, W/8)


class Decoder(nn.Module):
    def __init__(self, cfg: AEConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        channels = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, channels, 3, padding=1)
        self.mid = Mid(channels)
        levels = []
        for i in reversed(range(len(widths))):  # lowest resolution first; up.0 is the highest resolution
            resample = Upsample(widths[i]) if i else None  # made before the level's blocks (a seeded model's order)
            level = Level(channels, widths[i], cfg.num_res_blocks + 1)
            if resample is not None:
                level.upsample = resample  # FLUX's key: decoder.up.{i}.upsample
            levels.append(level)
            channels = widths[i]
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))  # (B, ch * ch_mult[-1], H/8, W/8)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))  # (B, 3, H, W)


class AutoEncoder(nn.Module):
    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, z_channels, H/8, W/8), scaled and shifted for the LLM.

        ``sample=True`` draws mean + exp(logvar / 2) * noise like the official code; ``False`` takes the mean.
        """
        f = self.config.downsample
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"encode expects (batch, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"image sides must be multiples of {f} to encode, got {x.shape[2]}x{x.shape[3]}")
        moments = self.encoder(fast_layout(x)).contiguous()
        mean, logvar = moments.chunk(2, dim=1)  # (B, z, H/8, W/8) each
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.config.scale_factor * (z - self.config.shift_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_channels, h, w) scaled latents -> (B, 3, 8h, 8w) image in about [-1, 1]."""
        return self.decoder(fast_layout(z / self.config.scale_factor + self.config.shift_factor)).contiguous()


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """On the CPU, the same tensor stored channels-last ((B, H, W, C) in memory): oneDNN's convolutions run
    about a third faster on it (a 512x512 decode, with fused SiLU: 1.65 s -> 1.07 s on one thread). The values
    are the same; the convolutions sum in another order (at most 2e-4 apart on that decode, pixels in [-1, 1];
    the golden autoencoder case, at 1e-4, still holds)."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x
