"""Tiled torch path of the fused NT-Xent loss, for CPU tensors.

The same algorithm as the Triton kernels in ``nt_xent.py``, written with torch matmuls over
blocks of rows so memory stays O(C·D + block·C) instead of O(C²): the similarity matrix is
never stored, only one fp32 logsumexp per row, and backward recomputes the tiles.

Notation (shared with ``nt_xent.py``): ``z`` (C, D) holds every column embedding (the whole
global batch), already normalised when asked; the anchors are the rows
``row_start .. row_start + n_rows`` of ``z``; ``negatives`` (M, D) are extra columns without
gradient. s_ij = z_i·z_j / τ and the self-similarity s_ii is excluded.

Two facts make it faster than the naive loss:
- with normalised inputs every |s_ij| ≤ 1/τ, so a fixed maximum replaces the online one
  (``fixed_max``): one exponential per element and no rescaling. Valid while exp(-2/τ) does not
  underflow; the caller decides. The symmetric path below does not even subtract it: exp(s_ij)
  itself lies in [e^(-1/τ), e^(1/τ)], a range of the same width, so fp32 holds it (and sums of up
  to 2^24 such terms) whenever the shifted form is valid, and each tile is one pass lighter.
- S is symmetric: when the anchors are all of ``z`` (one process), each pair of tiles is
  computed once (the upper triangle) for both its row and its column sums and gradients.

The cost is the GEMMs (one per tile forward, three backward): on the 2-core dev machine they run
near the fp32 matmul peak and the elementwise passes (exp, sums, weights) take about a fifth of
the time, so the tiles are sized for the intra-op threads (see ``_TILE_ELEMENTS``) and written
into reused buffers.
"""

from __future__ import annotations

import math

import torch

# One similarity tile: 512 rows × 2048 columns, 4 MiB of fp32. Each op on it is split over the
# intra-op threads, so with 2 threads each core's half fits its 2 MiB L2; and the tiles are big
# enough that the per-op thread synchronisation is amortised. Measured at 2N = 16384, D = 128 on
# the 2-core dev machine (2 threads): 256 × 2048 tiles took 1.5× as long; 512-1024 rows × 1-2 Mi
# elements were equal within noise; 2048 × 2048 was 10% slower.
_TILE_ELEMENTS = 1024 * 1024
_ROW_BLOCK = 512


def _blocks(start: int, stop: int, size: int):
    for b0 in range(start, stop, size):
        yield b0, min(b0 + size, stop)


def _col_block(n_rows_block: int) -> int:
    return max(_TILE_ELEMENTS // n_rows_block, 64)


def _symmetric(z: torch.Tensor, row_start: int, n_rows: int, fixed_max: bool) -> bool:
    return fixed_max and row_start == 0 and n_rows == z.shape[0]


class _Tile:
    """One reusable (bk, bj) buffer: the tiles are written in place instead of allocated per tile."""

    def __init__(self, dtype: torch.dtype):
        self.buf = torch.empty(0, dtype=dtype)

    def _view(self, rows: int, cols: int) -> torch.Tensor:
        if self.buf.numel() < rows * cols:
            self.buf = torch.empty(rows * cols, dtype=self.buf.dtype)
        return self.buf[: rows * cols].view(rows, cols)

    def mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a (bk, D) @ b (bj, D)^T into the buffer."""
        return torch.mm(a, b.T, out=self._view(a.shape[0], b.shape[0]))

    def outer_sum(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """u[:, None] + v[None, :] into the buffer: (len(u), len(v))."""
        return torch.add(u[:, None], v[None, :], out=self._view(u.shape[0], v.shape[0]))


def nt_xent_cpu_forward(
    z: torch.Tensor,
    row_start: int,
    n_rows: int,
    negatives: torch.Tensor | None,
    inv_tau: float,
    fixed_max: bool,
) -> torch.Tensor:
    """Logsumexp over j ≠ i of s_ij (columns of ``z`` then of ``negatives``) for each anchor.

    z: (C, D) float; negatives: (M, D) or None. Returns (n_rows,) in z's dtype.
    """
    if _symmetric(z, row_start, n_rows, fixed_max):
        return _forward_symmetric(z, negatives, inv_tau)
    return _forward_rows(z, row_start, n_rows, negatives, inv_tau, fixed_max)


def _forward_symmetric(z: torch.Tensor, negatives: torch.Tensor | None, inv_tau: float) -> torch.Tensor:
    c = z.shape[0]
    zs = z * inv_tau  # (C, D): scale once, O(C·D)
    total = torch.zeros(c, dtype=z.dtype)  # Σ_j exp(s_ij), no shift (see module doc)
    tile = _Tile(z.dtype)
    for k0, k1 in _blocks(0, c, _ROW_BLOCK):
        zk = zs[k0:k1]
        for j0, j1 in _blocks(k0, c, _col_block(k1 - k0)):
            e = tile.mm(zk, z[j0:j1]).exp_()  # (bk, bj) = exp(s_ij) ∈ [e^(-1/τ), e^(1/τ)]
            if j0 == k0:
                # The diagonal tile holds s_ii: excluded. Its row sums already count both
                # halves of the tile, so none of its column sums are added.
                e.diagonal().zero_()
                total[k0:k1] += e.sum(1)
                if j1 > k1:
                    total[k1:j1] += e[:, k1 - k0 :].sum(0)
            else:
                total[k0:k1] += e.sum(1)
                total[j0:j1] += e.sum(0)  # s_ji = s_ij: the transposed tile's row sums
    if negatives is not None:
        for k0, k1 in _blocks(0, c, _ROW_BLOCK):
            for j0, j1 in _blocks(0, negatives.shape[0], _col_block(k1 - k0)):
                total[k0:k1] += tile.mm(zs[k0:k1], negatives[j0:j1]).exp_().sum(1)
    return total.log_()


def _forward_rows(z, row_start, n_rows, negatives, inv_tau, fixed_max) -> torch.Tensor:
    """One pass per row block over every column (any rows, any maximum)."""
    lse = torch.empty(n_rows, dtype=z.dtype)
    col_sets = [z] if negatives is None else [z, negatives]
    for k0, k1 in _blocks(0, n_rows, _ROW_BLOCK):
        zk = z[row_start + k0 : row_start + k1] * inv_tau  # (bk, D)
        idx = torch.arange(k1 - k0)
        m = torch.full((k1 - k0,), inv_tau if fixed_max else float("-inf"), dtype=z.dtype)
        total = torch.zeros(k1 - k0, dtype=z.dtype)
        for set_id, cols in enumerate(col_sets):
            for j0, j1 in _blocks(0, cols.shape[0], _col_block(k1 - k0)):
                s = torch.mm(zk, cols[j0:j1].T)  # (bk, bj)
                if set_id == 0:
                    # Mask the self column s_ii where it falls in this tile.
                    self_col = row_start + k0 + idx - j0
                    inside = (self_col >= 0) & (self_col < j1 - j0)
                    s[idx[inside], self_col[inside]] = float("-inf")
                if not fixed_max:
                    m_new = torch.maximum(m, s.max(1).values)
                    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
                    total = total * torch.exp(m - m_safe) + torch.exp(s - m_safe[:, None]).sum(1)
                    m = m_new
                else:
                    total += s.sub_(m[:, None]).exp_().sum(1)
        lse[k0:k1] = total.log() + m
    return lse


def nt_xent_cpu_backward(
    z: torch.Tensor,
    row_start: int,
    n_rows: int,
    negatives: torch.Tensor | None,
    inv_tau: float,
    lse: torch.Tensor,
    g: torch.Tensor,
    fixed_max: bool,
) -> torch.Tensor:
    """Σ_j W_ij z_j + Σ_m g_i P_im negatives_m for each anchor i, with the self term excluded.

    W_ij = g_i P_ij + g_j P_ji, P_ij = exp(s_ij - lse_i) (S symmetric, so P_ji = exp(s_ij - lse_j)):
    the row and the column term of the gradient in one pass. The caller multiplies by 1/τ and
    adds the positive terms. lse, g: (C,) per column of ``z`` (the anchors' are the slice at
    ``row_start``). Returns (n_rows, D) in z's dtype.
    """
    if _symmetric(z, row_start, n_rows, fixed_max):
        return _backward_symmetric(z, negatives, inv_tau, lse, g)
    return _backward_rows(z, row_start, n_rows, negatives, inv_tau, lse, g)


def _backward_symmetric(z, negatives, inv_tau, lse, g) -> torch.Tensor:
    c = z.shape[0]
    zs = z * inv_tau
    # W_ij = exp(s_ij) (coef_i + coef_j) e^(-h): the tiles are not shifted (see module doc); coef
    # carries e^h, applied back once on acc, so that neither coef (for a tiny g) nor acc (for a
    # huge g) leaves fp32 range before the true W does: h = 1/(2τ), half way between the two.
    h = inv_tau / 2
    coef = g * torch.exp(h - lse)  # (C,)
    acc = torch.zeros_like(z)
    tile, weights = _Tile(z.dtype), _Tile(z.dtype)
    for k0, k1 in _blocks(0, c, _ROW_BLOCK):
        zk = z[k0:k1]
        for j0, j1 in _blocks(k0, c, _col_block(k1 - k0)):
            w = tile.mm(zs[k0:k1], z[j0:j1]).exp_()  # (bk, bj)
            w.mul_(weights.outer_sum(coef[k0:k1], coef[j0:j1]))
            if j0 == k0:
                w.diagonal().zero_()
                # The diagonal tile is symmetric: W @ z gives both halves for its own rows.
                acc[k0:k1].addmm_(w, z[k0:j1])
                if j1 > k1:
                    acc[k1:j1].addmm_(w[:, k1 - k0 :].T, zk)
            else:
                acc[k0:k1].addmm_(w, z[j0:j1])
                acc[j0:j1].addmm_(w.T, zk)
    if negatives is not None:
        # The negatives only feed the row terms: acc_i += coef_i Σ_m exp(s_im) negatives_m.
        neg_acc = torch.zeros_like(z)
        for k0, k1 in _blocks(0, c, _ROW_BLOCK):
            for j0, j1 in _blocks(0, negatives.shape[0], _col_block(k1 - k0)):
                p = tile.mm(zs[k0:k1], negatives[j0:j1]).exp_()
                neg_acc[k0:k1].addmm_(p, negatives[j0:j1])
        acc.addcmul_(neg_acc, coef[:, None])
    return acc.mul_(math.exp(-h))


def _add_negatives(acc, zs, row_start, n_rows, negatives, lse, g):
    """acc_i += Σ_m g_i exp(s_im - lse_i) negatives_m: the negatives only feed the row terms."""
    for k0, k1 in _blocks(0, n_rows, _ROW_BLOCK):
        r0, r1 = row_start + k0, row_start + k1
        for j0, j1 in _blocks(0, negatives.shape[0], _col_block(k1 - k0)):
            p = torch.mm(zs[r0:r1], negatives[j0:j1].T).sub_(lse[r0:r1, None]).exp_()
            acc[k0:k1] += torch.mm(p.mul_(g[r0:r1, None]), negatives[j0:j1])


def _backward_rows(z, row_start, n_rows, negatives, inv_tau, lse, g) -> torch.Tensor:
    """One pass per row block over every column; two exponentials per element."""
    zs = z * inv_tau
    acc = torch.zeros(n_rows, z.shape[1], dtype=z.dtype)
    for k0, k1 in _blocks(0, n_rows, _ROW_BLOCK):
        r0, r1 = row_start + k0, row_start + k1
        idx = torch.arange(k1 - k0)
        for j0, j1 in _blocks(0, z.shape[0], _col_block(k1 - k0)):
            s = torch.mm(zs[r0:r1], z[j0:j1].T)  # (bk, bj)
            w = torch.exp(s - lse[r0:r1, None]).mul_(g[r0:r1, None])
            w += torch.exp(s - lse[None, j0:j1]).mul_(g[None, j0:j1])
            self_col = r0 + idx - j0
            inside = (self_col >= 0) & (self_col < j1 - j0)
            w[idx[inside], self_col[inside]] = 0
            acc[k0:k1] += torch.mm(w, z[j0:j1])
    if negatives is not None:
        _add_negatives(acc, zs, row_start, n_rows, negatives, lse, g)
    return acc
