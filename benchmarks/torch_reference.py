"""The original's 32 px conditional SAGAN in PyTorch, for side-by-side step timing.

A transcription of the networks the port reproduces (SNGAN ResNet + self-attention at
8x8 in G and D, conditional BN in G, projection head in D; the architecture table and
parameter counts of docs/original.md: G 4,391,364, D 1,075,810 at 10 classes) and of
one training iteration as the original ran it: a G step, then a D step with new noise
and separate real and fake D passes, hinge loss, Adam(b1 = 0, b2 = 0.9), TTUR rates.
SN is `torch.nn.utils.spectral_norm` (one power step per training forward pass, `u`
kept across steps), the standard SN that `sagan_jax` uses by default. NCHW, eager.

Only speed is measured here; the numbers of `sagan_jax` are checked by its tests.

  python benchmarks/torch_reference.py --batch_size=16 --steps=5 --threads=2     # CPU
  python benchmarks/torch_reference.py --batch_size=256 --steps=50 --device=cuda
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

NUM_CLASSES, Z_DIM = 10, 128


def sn_conv(cin: int, cout: int, k: int) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, k, padding=k // 2))


class ConditionalBatchNorm(nn.Module):
    """BN without affine (eps 1e-4, momentum 0.1), then `(1 + E_g(y)) x + E_b(y)`."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=1e-4, momentum=0.1, affine=False)
        self.gamma = nn.Embedding(NUM_CLASSES, channels)
        self.beta = nn.Embedding(NUM_CLASSES, channels)
        nn.init.zeros_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma = 1.0 + self.gamma(y)[:, :, None, None]
        return self.bn(x) * gamma + self.beta(y)[:, :, None, None]


class SelfAttention(nn.Module):
    """BigGAN-style attention: `x + gamma * conv_o(softmax(theta^T phi) g)`."""

    def __init__(self, c: int):
        super().__init__()
        self.theta, self.phi = sn_conv(c, c // 8, 1), sn_conv(c, c // 8, 1)
        self.g, self.o = sn_conv(c, c // 2, 1), sn_conv(c // 2, c, 1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        theta = self.theta(x).view(b, c // 8, h * w)
        phi = F.max_pool2d(self.phi(x), 2).view(b, c // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), 2).view(b, c // 2, h * w // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)
        o = torch.bmm(g, beta.transpose(1, 2)).view(b, c // 2, h, w)
        return x + self.gamma * self.o(o)


class GBlock(nn.Module):
    """BN-ReLU-up-conv3-BN-ReLU-conv3 + up-conv1x1 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1, self.bn2 = ConditionalBatchNorm(cin), ConditionalBatchNorm(cout)
        self.conv1, self.conv2 = sn_conv(cin, cout, 3), sn_conv(cout, cout, 3)
        self.shortcut = sn_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DBlock(nn.Module):
    """(ReLU)-conv3-ReLU-conv3-(avgpool2) + shortcut; `optimized` is D's first block."""

    def __init__(self, cin: int, cout: int, downsample: bool, optimized: bool = False):
        super().__init__()
        self.conv1, self.conv2 = sn_conv(cin, cout, 3), sn_conv(cout, cout, 3)
        self.downsample, self.optimized = downsample, optimized
        self.shortcut = sn_conv(cin, cout, 1) if downsample or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x if self.optimized else F.relu(x))
        h = self.conv2(F.relu(h))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.optimized:
            return h + self.shortcut(F.avg_pool2d(x, 2))
        if self.shortcut is None:
            return h + x
        s = self.shortcut(x)
        return h + (F.avg_pool2d(s, 2) if self.downsample else s)


class Generator(nn.Module):
    """z (128) -> 4x4x256 -> 3 up-blocks of 256 (attention after the first) -> 32x32x3."""

    def __init__(self):
        super().__init__()
        self.dense = spectral_norm(nn.Linear(Z_DIM, 4 * 4 * 256))
        self.blocks = nn.ModuleList([GBlock(256, 256) for _ in range(3)])
        self.attention = SelfAttention(256)
        self.bn_out = ConditionalBatchNorm(256)
        self.conv_out = sn_conv(256, 3, 3)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(-1, 256, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, y)
            if i == 0:
                h = self.attention(h)
        return torch.tanh(self.conv_out(F.relu(self.bn_out(h, y))))


class Discriminator(nn.Module):
    """Optimized block 128@16, 128@8, 128@8, 128@8 (attention after the second), projection."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([
            DBlock(3, 128, True, optimized=True), DBlock(128, 128, True),
            DBlock(128, 128, False), DBlock(128, 128, False),
        ])
        self.attention = SelfAttention(128)
        self.dense_out = spectral_norm(nn.Linear(128, 1))
        self.embed = spectral_norm(nn.Embedding(NUM_CLASSES, 128))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == 1:
                h = self.attention(h)
        features = torch.sum(F.relu(h), dim=(2, 3))
        return self.dense_out(features)[:, 0] + torch.sum(features * self.embed(y), dim=1)


def make_iteration(g: Generator, d: Discriminator, batch_size: int, device: torch.device):
    """One training iteration of the original: a G step, then a D step (hinge, Adam)."""
    g_opt = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.9))
    d_opt = torch.optim.Adam(d.parameters(), lr=4e-4, betas=(0.0, 0.9))

    def noise():
        z = torch.randn(batch_size, Z_DIM, device=device)
        return z, torch.randint(0, NUM_CLASSES, (batch_size,), device=device)

    def iteration(real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z, y = noise()
        g_opt.zero_grad(set_to_none=True)
        g_loss = -d(g(z, y), y).mean()
        g_loss.backward()
        g_opt.step()
        z, y = noise()
        with torch.no_grad():
            fake = g(z, y)
        d_opt.zero_grad(set_to_none=True)
        d_loss = F.relu(1.0 - d(real, labels)).mean() + F.relu(1.0 + d(fake, y)).mean()
        d_loss.backward()
        d_opt.step()
        return d_loss.detach()

    return iteration


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed iterations")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    g, d = Generator().to(device).train(), Discriminator().to(device).train()
    iteration = make_iteration(g, d, args.batch_size, device)
    real = torch.rand(args.batch_size, 3, 32, 32, device=device) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    iteration(real, labels)  # warm-up
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = float(iteration(real, labels))  # float() waits for the device
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    print(f"torch {torch.__version__}, {args.device}, {args.threads} threads, "
          f"G {count_params(g):,} D {count_params(d):,} parameters, batch {args.batch_size}")
    print(f"step  median {statistics.median(times) * 1e3:.1f} ms/iter over {args.steps} "
          f"({', '.join(f'{t * 1e3:.0f}' for t in times)}); last D loss {loss:.4f}")
    # Process CPU time (all threads) varies less than wall time on a shared machine.
    print(f"cpu   median {statistics.median(cpu_times) * 1e3:.1f} ms/iter")


if __name__ == "__main__":
    main()
