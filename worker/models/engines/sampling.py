"""Seeded sampling that does not depend on the batch a request lands in: each request's noise at
each step is a hash of (its seed, the step, the token id), so a sampled request gives the same
tokens whatever batch, engine or device runs it (up to the logits' own arithmetic), and greedy
rows are a plain argmax.

Sampling is the Gumbel-max trick: ``argmax(logits / temperature + g)`` with ``g`` standard
Gumbel noise is a draw from ``softmax(logits / temperature)``; top-p removes the tail first.
The noise comes from splitmix64 run on int64 tensors (wrapping multiplication, logical shifts
written as masked arithmetic ones), so it is vectorised over the batch and the vocabulary and
needs no per-row ``torch.Generator``.

torch is imported inside the functions. Imports: nothing of Barge's.
"""

from __future__ import annotations

from typing import Any

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
KEY_BITS = 31  # a row key is a non-negative int32 (the continuous engine passes it as one)


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 torch holds it."""
    return value - (1 << 64) if value >= 1 << 63 else value


def mix(value: int) -> int:
    """splitmix64's finaliser on a Python int (64-bit pattern in, 64-bit pattern out)."""
    z = (value + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def row_key(seed: int, step: int) -> int:
    """The noise key of a request's ``step``-th new token: 31 bits, never 0 (0 means greedy)."""
    return (mix((mix(seed & MASK64) + step) & MASK64) % ((1 << KEY_BITS) - 1)) + 1


def _shr(x: Any, bits: int) -> Any:
    """Logical right shift of int64 tensors holding 64-bit patterns."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix_tensor(x: Any) -> Any:
    z = x + _signed(GOLDEN)
    z = (z ^ _shr(z, 30)) * _signed(MIX1)
    z = (z ^ _shr(z, 27)) * _signed(MIX2)
    return z ^ _shr(z, 31)


_VOCAB_HASH: dict[tuple[int, str], Any] = {}


def _vocab_hash(vocab: int, device: Any) -> Any:
    """splitmix64 of every token id (kept per vocabulary size and device)."""
    key = (vocab, str(device))
    found = _VOCAB_HASH.get(key)
    if found is None:
        import torch

        found = _mix_tensor(torch.arange(vocab, dtype=torch.int64, device=device))
        _VOCAB_HASH[key] = found
    return found


def gumbel(keys: Any, vocab: int) -> Any:
    """Standard Gumbel noise, one row per key (int64 tensor [rows]) over ``vocab`` tokens."""
    import torch

    h = _mix_tensor(
        keys.to(torch.int64)[:, None] * _signed(GOLDEN) + _vocab_hash(vocab, keys.device)
    )
    u = (_shr(h, 40).to(torch.float32) + 0.5) / float(1 << 24)  # uniform on (0, 1)
    return -torch.log(-torch.log(u))


def top_p_filter(scores: Any, top_p: Any) -> Any:
    """``scores`` [rows, vocab] with each row's tail beyond its ``top_p`` mass set to -inf (the
    most likely token always kept), as ``transformers``' ``TopPLogitsWarper`` does."""
    import torch

    ordered, order = torch.sort(scores, descending=False, dim=-1)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)[:, None]
    remove[:, -1] = False
    return scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def pick(logits: Any, temperature: Any, top_p: Any, keys: Any) -> Any:
    """The next token of each row of ``logits`` [rows, vocab] (fp32): the argmax where the row's
    key is 0 (greedy), else a draw at the row's temperature and top-p with the row's key's
    noise. ``temperature``/``top_p`` are fp32 [rows], ``keys`` int64 [rows]."""
    import torch

    greedy = torch.argmax(logits, dim=-1)
    sampled = keys != 0
    if not bool(sampled.any()):
        return greedy
    rows = sampled.nonzero().squeeze(-1)
    scores = logits[rows] / temperature[rows].clamp_min(1e-6)[:, None]
    if bool((top_p[rows] < 1).any()):
        scores = top_p_filter(scores, top_p[rows])
    drawn = torch.argmax(scores + gumbel(keys[rows], logits.shape[-1]), dim=-1)
    return greedy.index_copy(0, rows, drawn)
