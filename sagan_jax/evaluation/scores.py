"""Inception Score, Frechet distance and Kernel Inception Distance from features.

Everything runs on the host in float64 with the reference formulas, so the numbers do not
depend on how the features were batched or on the accelerator's arithmetic:

* IS: torch-fidelity's convention, which is OpenAI's original one: softmax of the
  bias-free logits, `splits` contiguous chunks `[i * N // splits, (i + 1) * N // splits)`,
  per chunk `exp(mean_x KL(p(y|x) || p(y)))`, then the mean and the (population, ddof=0)
  standard deviation over chunks. (torch-fidelity shuffles the samples first; generated
  samples are i.i.d., so we do not.)
* FID: `|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`, the trace term computed
  as `sum(sqrt(eig(A S1 A)))` with `A = S2^(1/2)` from a symmetric eigendecomposition.
  `A S1 A` is symmetric PSD and has the eigenvalues of `S1 S2`, so this equals
  `tr(scipy.linalg.sqrtm(S1 @ S2))` without its failure modes (complex round-off,
  non-convergence on near-singular covariances), and `A` of the reference statistics can
  be computed once and reused.
* KID: unbiased MMD^2 with the cubic polynomial kernel `(x.y / d + 1)^3`, averaged over
  random subsets as in Binkowski et al. (2018) and torch-fidelity (subsets drawn with
  `np.random.RandomState(seed).choice(..., replace=False)`; their number, size and seed
  are the config's `eval.kid_*`).
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation of the Inception Score over `splits` chunks.

    Args:
      logits: (N, K) classifier logits (for Inception: `logits_unbiased`).
      splits: number of contiguous chunks (10 in the papers).
    """
    logits = np.asarray(logits, np.float64)
    n = len(logits)
    if n < splits:
        raise ValueError(f"IS needs at least one sample per split: got {n} samples for "
                         f"{splits} splits; raise --config.eval.num_samples.")
    log_p = logits - logsumexp(logits, axis=1, keepdims=True)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        chunk = slice(i * n // splits, (i + 1) * n // splits)
        log_q = np.log(p[chunk].mean(axis=0))
        kl = np.sum(p[chunk] * (log_p[chunk] - log_q), axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ddof=1) covariance of (N, D) features, in float64."""
    features = np.asarray(features, np.float64)
    if len(features) < 2:
        raise ValueError(f"FID needs at least 2 samples, got {len(features)}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (negative round-off eigenvalues -> 0)."""
    sigma = np.asarray(sigma, np.float64)
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, sqrt_sigma2: np.ndarray | None = None) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
      mu1, sigma1: statistics of the generated features.
      mu2, sigma2: statistics of the reference features.
      sqrt_sigma2: `sqrt_psd(sigma2)` if already known (saves one eigendecomposition).
    """
    a = sqrt_psd(sigma2) if sqrt_sigma2 is None else sqrt_sigma2
    m = a @ np.asarray(sigma1, np.float64) @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray,
                              num_subsets: int, subset_size: int,
                              seed: int) -> tuple[float, float]:
    """Mean and standard deviation over subsets of the unbiased polynomial-kernel MMD^2.

    Args:
      features1, features2: (N1, D) and (N2, D) features.
      num_subsets, subset_size, seed: the random subsets (eval.kid_subsets,
        eval.kid_subset_size, eval.kid_seed). The subset size is capped at the smaller
        sample count (torch-fidelity would refuse).
    """
    x_all = np.asarray(features1, np.float64)
    y_all = np.asarray(features2, np.float64)
    m = min(subset_size, len(x_all), len(y_all))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {m}.")
    rng = np.random.RandomState(seed)
    d = x_all.shape[1]
    mmds = []
    def kernel(a, b):
        k = a @ b.T  # NumPy computes a @ a.T as a symmetric product, at half the cost.
        k /= d
        k += 1.0
        k *= k * k  # The cube as two products: np.power (`** 3`) is ~35x slower.
        return k

    for _ in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        k_xx, k_yy = kernel(x, x), kernel(y, y)
        within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
        mmds.append(within / (m * (m - 1)) - 2.0 * kernel(x, y).sum() / (m * m))
    return float(np.mean(mmds)), float(np.std(mmds))
