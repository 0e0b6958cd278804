r"""Amortized variational inference: a small VAE on scikit-learn digits and per-instance ELBO problems.

For an image :math:`x` and a diagonal Gaussian :math:`q(z) = \mathcal{N}(\mu, \mathrm{diag}\, e^{s})` the
evidence lower bound is

.. math:: \mathrm{ELBO}(\mu, s; x) = \mathbb{E}_{q}[\log p_\phi(x \mid z)]
    - \mathrm{KL}(q \,\|\, \mathcal{N}(0, I)),
    \quad \mathrm{KL} = \tfrac12 \sum_d (\mu_d^2 + e^{s_d} - 1 - s_d),

with a Bernoulli decoder on the gray levels in [0, 1]
(:math:`\log p = -\mathrm{BCE}(\text{logits}_\phi(z), x)`).
The expectation uses reparameterized samples :math:`z = \mu + e^{s/2}\epsilon` with the noise
:math:`\epsilon` fixed in the context (common random numbers), so :class:`ELBOProblem` is a deterministic,
batched problem over :math:`y = (\mu, s)`: ``do.solve(ELBOProblem(vae.decoder), do.Adam(...), x)`` is
per-instance inference, the VAE's encoder is the amortized solver (:class:`EncoderModel`), and
``SemiAmortized(EncoderModel(vae), do.Adam(...), steps=k)`` is semi-amortized inference (Kim et al. 2018).
The amortization gap (Cremer, Li & Duvenaud 2018) is the ELBO gained by optimizing :math:`q` per instance
over the encoder's.

Example:
    >>> import torch, doubleopt as do
    >>> from doubleopt.amortized.vae import DigitsVAE, ELBOProblem, EncoderModel, elbo_context
    >>> vae = DigitsVAE(latent=4, hidden=32)
    >>> images = do.problems.load_dataset("digits", "test")[0][:5]
    >>> x = elbo_context(images, samples=8, latent=4, seed=0)
    >>> sol = do.solve(ELBOProblem(vae.decoder), do.amortized.FullyAmortized(EncoderModel(vae)), x,
    ...                throw=False)
    >>> sol.value.shape
    torch.Size([5])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._problem import Problem


@dataclass
class ELBOContext:
    images: Tensor  # (B, 64) gray levels in [0, 1]
    noise: Tensor  # (B, S, d) standard normal samples


def elbo_context(images: Tensor, samples: int, latent: int, seed: int = 0) -> ELBOContext:
    """An :class:`ELBOContext` with ``samples`` fixed noise draws per image (seeded)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape[0], samples, latent, generator=g, dtype=images.dtype)
    return ELBOContext(images, noise)


def elbo(decoder: nn.Module, images: Tensor, mu: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """``(B,)`` Monte-Carlo ELBO with the given noise (see the module docstring)."""
    z = mu[:, None, :] + torch.exp(0.5 * logvar)[:, None, :] * noise  # (B, S, d)
    logits = decoder(z)
    rec = -F.binary_cross_entropy_with_logits(logits, images[:, None, :].expand_as(logits), reduction="none")
    kl = 0.5 * (mu * mu + torch.exp(logvar) - 1 - logvar).sum(-1)
    return rec.sum(-1).mean(-1) - kl


class DigitsVAE(nn.Module):
    """MLP VAE for 8x8 digits: encoder ``64 -> hidden -> 2 latent``, decoder ``latent -> hidden -> 64``."""

    def __init__(self, latent: int = 8, hidden: int = 256, data_dim: int = 64):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(
            nn.Linear(data_dim, hidden),
            nn.ELU(),
            nn.Linear(hidden, hidden),
            nn.ELU(),
            nn.Linear(hidden, 2 * latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.ELU(),
            nn.Linear(hidden, hidden),
            nn.ELU(),
            nn.Linear(hidden, data_dim),
        )

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(images)
        return h[:, : self.latent], h[:, self.latent :]

    def loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Negative mean ELBO with one fresh reparameterized sample per image (the training loss)."""
        mu, logvar = self.encode(images)
        noise = torch.randn(images.shape[0], 1, self.latent, generator=generator, dtype=images.dtype)
        return -elbo(self.decoder, images, mu, logvar, noise).mean()


class EncoderModel(nn.Module):
    """The VAE's encoder as an amortized model: :class:`ELBOContext` -> ``y = (mu, logvar)``."""

    def __init__(self, vae: DigitsVAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: ELBOContext) -> Tensor:
        return torch.cat(self.vae.encode(x.images), dim=-1)


class ELBOProblem(Problem):
    """Per-instance inference :math:`\\min_{\\mu, s} -\\mathrm{ELBO}(\\mu, s; x)` with a fixed decoder.

    ``y`` is ``(B, 2d)``: means then log-variances. The decoder's parameters are frozen (inference only).
    """

    def __init__(self, decoder: nn.Module, latent: int | None = None):
        super().__init__()
        self.decoder = decoder
        for p in self.decoder.parameters():
            p.requires_grad_(False)
        first = next(m for m in decoder.modules() if isinstance(m, nn.Linear))
        self.latent = latent or first.in_features
        self.dim = 2 * self.latent

    def objective(self, y: Tensor, x: ELBOContext) -> Tensor:
        d = self.latent
        return -elbo(self.decoder, x.images, y[:, :d], y[:, d:], x.noise)

    def check_context(self, x):
        if not isinstance(x, ELBOContext):
            raise ValueError(f"ELBOProblem expects an ELBOContext(images, noise), got {type(x).__name__}")
        if x.noise.dim() != 3 or x.noise.shape[-1] != self.latent or x.noise.shape[0] != x.images.shape[0]:
            raise ValueError(
                f"noise must be (B, S, {self.latent}) with B = {x.images.shape[0]}, got {tuple(x.noise.shape)}"
            )


def train_vae(
    vae: DigitsVAE,
    images: Tensor,
    *,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train encoder and decoder jointly on the negative ELBO (Adam, cosine schedule); returns the losses."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    from .._progress import progress_bar

    bar = progress_bar(steps, "train VAE") if progress else None
    losses = []
    for _ in range(steps):
        idx = torch.randint(images.shape[0], (batch_size,), generator=g)
        loss = vae.loss(images[idx], generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return losses
