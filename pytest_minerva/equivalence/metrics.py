"""Metrics comparing a reference backend's logits with a candidate's over the same token positions.

Inputs are ``(positions, vocab)`` arrays (float32 from a backend; any real dtype is accepted) where
row ``i`` is the next-token distribution after the first ``i + 1`` input tokens. Everything is
computed in float64. The definitions follow llama.cpp so that numbers read the same way:

* ``llama-perplexity --kl-divergence`` (``tools/perplexity/perplexity.cpp``): per-position
  ``KL(P_ref || P_cand) = sum_t p_ref(t) * (log p_ref(t) - log p_cand(t))`` with the base (reference)
  model as ``P``; "Same top p" (:func:`top1_agreement`); ``RMS Δp`` over the probability each side
  gives the actual next token (:func:`probability_delta_rms`); percentiles by linear interpolation
  between sorted values (numpy's default), which is llama.cpp's ``percentile`` lambda. llama.cpp
  stores base log-probabilities in 16 bits and skips tokens below ``log p = -16``; we keep all.
* ``test-backend-ops`` (``tests/test-backend-ops.cpp``): ``NMSE = mse(a, b) / mse(a, 0)`` with ``a``
  the reference (:func:`nmse`). Its default threshold per op is ``1e-7``.

Logits are defined up to a per-row constant (softmax ignores it), and backends do differ by one.
Every metric here is invariant under adding a constant to any row of either side: distribution
metrics go through log-softmax, and the raw-logit metrics (:func:`max_abs_logit_difference`,
:func:`nmse`) first subtract each row's mean over the tokens both sides give a finite logit
(mean rather than logsumexp: an error on one dominant token then stays on that token instead of
shifting every other token's difference).

When the two vocabularies differ in size (embedding matrices padded to a multiple of 64, say), the
common prefix of token ids is compared, each side renormalized over it, and the report says so and
how much probability the extra ids carried (:attr:`EquivalenceReport.excess_vocab_mass`).

A row holding NaN or ``+inf``, or only ``-inf``, is not a distribution: such positions are listed
in the report and score as total disagreement (KL ``inf``, top-1 mismatch, overlap 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

DEFAULT_TOPK: tuple[int, ...] = (5, 10)
DIAGNOSIS_TOPK = 5
_CHUNK_ROWS = 32
_TOPK_PATTERN = re.compile(r"^top([1-9][0-9]*)_overlap$")

TokenIds = Sequence[int] | np.ndarray
"""Token ids as a list, tuple or 1-D integer array."""


@dataclass(frozen=True)
class MetricSpec:
    """What a metric name means and which direction is better.

    ``better="lower"`` metrics get an upper bound in a profile, ``"higher"`` ones a lower bound.
    ``kind`` says how a bound is derived from measurements: ``"divergence"`` (>= 0, ideal 0),
    ``"rate"`` (in [0, 1], ideal 1) or ``"count"`` (a token count, larger is better).
    """

    name: str
    better: Literal["lower", "higher"]
    kind: Literal["divergence", "rate", "count"]
    description: str


_FIXED_METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("kl_mean", "lower", "divergence", "mean over positions of KL(P_ref || P_cand), nats"),
        MetricSpec("kl_p99", "lower", "divergence", "99th percentile over positions of KL(P_ref || P_cand)"),
        MetricSpec("kl_max", "lower", "divergence", "largest per-position KL(P_ref || P_cand)"),
        MetricSpec("top1_agreement", "higher", "rate", "fraction of positions whose argmax token is the same"),
        MetricSpec("max_dlogit", "lower", "divergence", "largest |Δlogit| after centering each row on its mean"),
        MetricSpec("nmse", "lower", "divergence", "test-backend-ops NMSE of the row-centered logits"),
        MetricSpec("dp_rms", "lower", "divergence", "RMS of Δp, the change in probability of the next token"),
        MetricSpec("greedy_prefix", "higher", "count", "tokens of greedy output identical before divergence"),
        MetricSpec("excess_vocab_mass", "lower", "divergence", "probability either side puts on ids the other lacks"),
    )
}


def metric_spec(name: str) -> MetricSpec:
    """The :class:`MetricSpec` for ``name`` (``top{k}_overlap`` for any k); ``KeyError`` if unknown."""
    if name in _FIXED_METRICS:
        return _FIXED_METRICS[name]
    match = _TOPK_PATTERN.match(name)
    if match:
        k = int(match.group(1))
        return MetricSpec(name, "higher", "rate", f"mean |top-{k} ref ∩ top-{k} cand| / {k} over positions")
    known = ", ".join([*_FIXED_METRICS, "top{k}_overlap"])
    raise KeyError(f"unknown metric {name!r}; known: {known}")


def topk_of_metric(name: str) -> int | None:
    """``k`` for a ``top{k}_overlap`` metric name, else ``None``."""
    match = _TOPK_PATTERN.match(name)
    return int(match.group(1)) if match else None


def _as_logits(array: Any, side: str) -> np.ndarray:
    """A float64 ``(positions, vocab)`` view of ``array`` (or of ``array.logits``)."""
    if hasattr(array, "logits") and not isinstance(array, np.ndarray):
        array = array.logits
        if callable(array):
            raise TypeError(f"{side}: pass a logits array or an object whose .logits is an array, not a backend")
    data = np.asarray(array)
    if data.dtype.kind not in "fiu":
        raise TypeError(f"{side} logits must be real numbers, got dtype {data.dtype}")
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    elif data.ndim == 1:
        data = data[np.newaxis, :]
    if data.ndim != 2:
        raise ValueError(f"{side} logits must have shape (positions, vocab), got {data.shape}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{side} logits are empty: shape {data.shape}")
    return data.astype(np.float64, copy=False)


def _invalid_rows(logits: np.ndarray) -> np.ndarray:
    """Rows that are not a distribution: any NaN or +inf, or every entry -inf."""
    bad: np.ndarray = np.isnan(logits).any(axis=1) | np.isposinf(logits).any(axis=1)
    return bad | np.isneginf(logits).all(axis=1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=-1, keepdims=True)
    shifted = x - top
    with np.errstate(divide="ignore"):
        out: np.ndarray = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return out


def log_softmax(logits: Any) -> np.ndarray:
    """Row-wise ``log softmax`` in float64, stable for any magnitude (max-subtracted logsumexp).

    ``-inf`` logits (masked tokens) give ``-inf``; rows with NaN or ``+inf`` give NaN.
    """
    x = np.asarray(logits, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return _log_softmax(x)


def _kl_rows(ref_logp: np.ndarray, cand_logp: np.ndarray) -> np.ndarray:
    p = np.exp(ref_logp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (ref_logp - cand_logp), 0.0)
    # Rounding leaves values around -1e-17 for identical inputs; KL itself is never negative.
    kl: np.ndarray = np.maximum(terms.sum(axis=1), 0.0)
    return kl


def _ordered_topk(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries, largest first; equal values in index order."""
    k = min(k, row.shape[0])
    kth = np.partition(row, row.shape[0] - k)[row.shape[0] - k]
    candidates = np.flatnonzero(row >= kth)
    order = np.lexsort((candidates, -row[candidates]))
    return candidates[order[:k]]


def _ordered_topk_rows(x: np.ndarray, k: int) -> np.ndarray:
    """:func:`_ordered_topk` for every row; rows without ties at the k-th value take a vectorized path."""
    vocab = x.shape[1]
    k = min(k, vocab)
    kth = np.partition(x, vocab - k, axis=1)[:, vocab - k : vocab - k + 1]
    above = x >= kth
    simple = above.sum(axis=1) == k
    out = np.empty((x.shape[0], k), dtype=np.int64)
    if simple.any():
        cols = np.nonzero(above[simple])[1].reshape(-1, k)
        vals = np.take_along_axis(x[simple], cols, axis=1)
        out[simple] = np.take_along_axis(cols, np.lexsort((cols, -vals), axis=-1), axis=1)
    for i in np.flatnonzero(~simple):
        out[i] = _ordered_topk(x[i], k)
    return out


def _centered_difference(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|Δ| of row-mean-centered logits, plus per-row squared-error and reference-energy sums (NMSE)."""
    both = np.isfinite(ref) & np.isfinite(cand)
    count = np.maximum(both.sum(axis=1, keepdims=True), 1)
    ref_c = ref - np.where(both, ref, 0.0).sum(axis=1, keepdims=True) / count
    cand_c = cand - np.where(both, cand, 0.0).sum(axis=1, keepdims=True) / count
    with np.errstate(invalid="ignore"):
        diff = np.where(both, np.abs(cand_c - ref_c), 0.0)
    one_sided = np.isneginf(ref) != np.isneginf(cand)
    sq_err = np.where(one_sided.any(axis=1), np.inf, (diff**2).sum(axis=1))
    energy = (np.where(both, ref_c, 0.0) ** 2).sum(axis=1)
    return np.where(one_sided, np.inf, diff), sq_err, energy


def align_vocab(reference: Any, candidate: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Both sides as float64 ``(positions, vocab)`` arrays cut to their common vocab prefix.

    Returns ``(reference, candidate, vocab_compared)``. Raises ``ValueError`` when the position
    counts differ: the two sides did not see the same tokens.
    """
    ref = _as_logits(reference, "reference")
    cand = _as_logits(candidate, "candidate")
    if ref.shape[0] != cand.shape[0]:
        raise ValueError(
            f"reference has {ref.shape[0]} positions, candidate {cand.shape[0]}: "
            "compare logits computed for the same token ids"
        )
    n = min(ref.shape[1], cand.shape[1])
    return ref[:, :n], cand[:, :n], n


def kl_divergence(reference_logits: Any, candidate_logits: Any) -> np.ndarray:
    """Per-position ``KL(P_ref || P_cand)`` in nats, as llama-perplexity --kl-divergence defines it."""
    return compare_logits(reference_logits, candidate_logits, topk=()).kl


def top1_agreement(reference_logits: Any, candidate_logits: Any) -> float:
    """Fraction of positions where both sides' most likely token is the same ("Same top p").

    Ties go to the lowest token id on both sides, so equal inputs always agree.
    """
    return compare_logits(reference_logits, candidate_logits, topk=()).top1_agreement


def topk_overlap(reference_logits: Any, candidate_logits: Any, k: int = 5) -> float:
    """Mean over positions of ``|top-k(ref) ∩ top-k(cand)| / k``, in [0, 1] and symmetric.

    Ties at the k-th value go to the lowest token ids. ``k`` larger than the vocab compares it all.
    """
    return compare_logits(reference_logits, candidate_logits, topk=(k,)).topk_overlap[k]


def max_abs_logit_difference(reference_logits: Any, candidate_logits: Any) -> tuple[float, int, int]:
    """``(max |Δlogit|, position, token id)`` after centering each row on its mean.

    The mean is taken over tokens both sides give a finite logit, so the value does not change
    when a constant is added to any row. A token masked (``-inf``) on one side only counts as ``inf``.
    """
    report = compare_logits(reference_logits, candidate_logits, topk=())
    return report.max_dlogit, report.max_dlogit_position, report.max_dlogit_token


def nmse(reference_logits: Any, candidate_logits: Any) -> float:
    """test-backend-ops' ``mse(ref, cand) / mse(ref, 0)`` over all positions of row-centered logits.

    ``0`` when both are identical up to per-row shifts; ``inf`` when the reference rows are constant
    and the candidate's are not, or when either side has a non-distribution row.
    """
    return compare_logits(reference_logits, candidate_logits, topk=()).nmse


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else float("inf")


def probability_delta_rms(reference_logits: Any, candidate_logits: Any, tokens: TokenIds) -> float | None:
    """llama-perplexity's ``RMS Δp``: RMS over positions of ``p_cand(next) - p_ref(next)``.

    ``tokens`` are the input ids the logits were computed for (one per row); row ``i`` is scored on
    ``tokens[i + 1]``, so the last row has nothing to score. ``None`` for a single position.
    """
    return compare_logits(reference_logits, candidate_logits, tokens=tokens, topk=()).dp_rms


def _next_tokens(tokens: TokenIds, positions: int, vocab: int) -> np.ndarray:
    ids = np.asarray(list(tokens), dtype=np.int64)
    if ids.ndim != 1 or ids.size != positions:
        raise ValueError(f"tokens must list the {positions} input ids the logits rows belong to, got {ids.size}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}) (the compared vocab), got {ids.min()}..{ids.max()}")
    return ids[1:]


@dataclass(frozen=True)
class GreedyAgreement:
    """How far two greedy generations from the same prompt stay identical.

    ``prefix_length`` counts leading tokens that are equal. ``first_divergence`` is the index of the
    first token that differs, or where the shorter sequence stopped; ``None`` when both are equal.
    """

    prefix_length: int
    first_divergence: int | None
    reference_tokens: tuple[int, ...]
    candidate_tokens: tuple[int, ...]

    @property
    def identical(self) -> bool:
        return self.first_divergence is None


def greedy_agreement(reference_tokens: Iterable[int], candidate_tokens: Iterable[int]) -> GreedyAgreement:
    """Compare two generated token sequences: identical prefix length and first diverging index."""
    ref = tuple(int(t) for t in reference_tokens)
    cand = tuple(int(t) for t in candidate_tokens)
    prefix = 0
    for a, b in zip(ref, cand, strict=False):
        if a != b:
            break
        prefix += 1
    diverged = prefix < max(len(ref), len(cand))
    return GreedyAgreement(prefix, prefix if diverged else None, ref, cand)


@dataclass(frozen=True)
class EquivalenceReport:
    """Every metric of one reference/candidate comparison, plus what a diagnosis needs.

    Summary fields are plain numbers; per-position arrays (``kl``, ``top1_match``, ``overlap``,
    ``dlogit``, the top-5 ids/probabilities of each side) are kept for diagnosis and excluded from
    ``repr`` and from :meth:`as_dict` unless asked for.
    """

    positions: int
    vocab_reference: int
    vocab_compared: int
    vocab_candidate: int
    excess_vocab_mass: float
    kl_mean: float
    kl_p99: float
    kl_max: float
    kl_max_position: int
    top1_agreement: float
    topk_overlap: dict[int, float]
    max_dlogit: float
    max_dlogit_position: int
    max_dlogit_token: int
    nmse: float
    dp_rms: float | None
    greedy: GreedyAgreement | None
    nonfinite_reference: tuple[int, ...]
    nonfinite_candidate: tuple[int, ...]
    kl: np.ndarray = field(repr=False, compare=False)
    top1_match: np.ndarray = field(repr=False, compare=False)
    overlap: dict[int, np.ndarray] = field(repr=False, compare=False)
    dlogit: np.ndarray = field(repr=False, compare=False)
    nmse_rows: np.ndarray = field(repr=False, compare=False)
    excess_mass_rows: np.ndarray = field(repr=False, compare=False)
    dp: np.ndarray | None = field(repr=False, compare=False)
    reference_top_ids: np.ndarray = field(repr=False, compare=False)
    reference_top_probs: np.ndarray = field(repr=False, compare=False)
    candidate_top_ids: np.ndarray = field(repr=False, compare=False)
    candidate_top_probs: np.ndarray = field(repr=False, compare=False)

    @property
    def vocab_truncated(self) -> bool:
        """True when the sides' vocab sizes differ and only the common prefix was compared."""
        return self.vocab_reference != self.vocab_candidate

    @property
    def nonfinite_positions(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.nonfinite_reference) | set(self.nonfinite_candidate)))

    def metric_value(self, name: str) -> float | None:
        """The summary value of metric ``name``, or ``None`` when its input was not given."""
        metric_spec(name)
        k = topk_of_metric(name)
        if k is not None:
            return self.topk_overlap.get(k)
        if name == "greedy_prefix":
            return None if self.greedy is None else float(self.greedy.prefix_length)
        return getattr(self, name)  # type: ignore[no-any-return]

    def worst_position(self, name: str) -> int | None:
        """The logits row that contributes most to metric ``name`` being bad (``None`` for greedy)."""
        metric_spec(name)
        bad = self.nonfinite_positions
        if bad:
            return bad[0]
        k = topk_of_metric(name)
        if name in ("kl_mean", "kl_p99", "kl_max"):
            return int(np.argmax(self.kl))
        if name == "top1_agreement":
            return _worst_where(~self.top1_match, self.kl)
        if k is not None:
            if k not in self.overlap:
                return None
            scores = self.overlap[k]
            return _worst_where(scores == scores.min(), self.kl)
        if name == "max_dlogit":
            return self.max_dlogit_position
        if name == "nmse":
            return int(np.argmax(self.nmse_rows))
        if name == "dp_rms":
            return None if self.dp is None else int(np.argmax(np.abs(self.dp)))
        if name == "excess_vocab_mass":
            return int(np.argmax(self.excess_mass_rows))
        return None

    def as_dict(self, *, per_position: bool = False) -> dict[str, Any]:
        """JSON-ready summary; ``per_position=True`` adds the per-row KL, top-1, overlap and Δlogit."""
        out: dict[str, Any] = {
            "positions": self.positions,
            "vocab": {
                "reference": self.vocab_reference,
                "candidate": self.vocab_candidate,
                "compared": self.vocab_compared,
                "excess_mass": self.excess_vocab_mass,
            },
            "kl_mean": self.kl_mean,
            "kl_p99": self.kl_p99,
            "kl_max": self.kl_max,
            "kl_max_position": self.kl_max_position,
            "top1_agreement": self.top1_agreement,
            **{f"top{k}_overlap": v for k, v in sorted(self.topk_overlap.items())},
            "max_dlogit": self.max_dlogit,
            "max_dlogit_position": self.max_dlogit_position,
            "max_dlogit_token": self.max_dlogit_token,
            "nmse": self.nmse,
            "dp_rms": self.dp_rms,
            "nonfinite_positions": {
                "reference": list(self.nonfinite_reference),
                "candidate": list(self.nonfinite_candidate),
            },
            "greedy": None
            if self.greedy is None
            else {
                "prefix_length": self.greedy.prefix_length,
                "first_divergence": self.greedy.first_divergence,
                "reference_length": len(self.greedy.reference_tokens),
                "candidate_length": len(self.greedy.candidate_tokens),
            },
        }
        if per_position:
            out["per_position"] = {
                "kl": self.kl.tolist(),
                "top1_match": self.top1_match.tolist(),
                **{f"top{k}_overlap": v.tolist() for k, v in sorted(self.overlap.items())},
                "max_dlogit": self.dlogit.tolist(),
            }
        return out


def _worst_where(mask: np.ndarray, kl: np.ndarray) -> int | None:
    if not mask.any():
        return None
    return int(np.flatnonzero(mask)[np.argmax(kl[mask])])


def _excess_mass(full: np.ndarray, n: int, bad: np.ndarray) -> np.ndarray:
    if full.shape[1] <= n:
        return np.zeros(full.shape[0])
    safe = np.where(bad[:, None], 0.0, full)
    mass = np.exp(_log_softmax(safe)[:, n:]).sum(axis=1)
    return np.where(bad, np.inf, mass)


def compare_logits(
    reference_logits: Any,
    candidate_logits: Any,
    *,
    tokens: TokenIds | None = None,
    reference_generation: Iterable[int] | None = None,
    candidate_generation: Iterable[int] | None = None,
    topk: Iterable[int] = DEFAULT_TOPK,
) -> EquivalenceReport:
    """Compute every metric of this module for one pair of logits arrays.

    ``tokens`` (the input ids, one per row) adds ``dp_rms``; the two generations (greedy token ids
    from the same prompt) add ``greedy``. ``topk`` lists the k of the ``top{k}_overlap`` metrics.
    Memory stays bounded: rows are processed in chunks of 32.
    """
    ref_full = _as_logits(reference_logits, "reference")
    cand_full = _as_logits(candidate_logits, "candidate")
    ref, cand, n = align_vocab(ref_full, cand_full)
    positions = ref.shape[0]
    bad_ref = _invalid_rows(ref_full) | (_invalid_rows(ref) if n < ref_full.shape[1] else False)
    bad_cand = _invalid_rows(cand_full) | (_invalid_rows(cand) if n < cand_full.shape[1] else False)
    bad = bad_ref | bad_cand
    ks = sorted({int(k) for k in topk})
    if any(k < 1 for k in ks):
        raise ValueError(f"top-k sizes must be >= 1, got {ks}")
    depth = min(max([DIAGNOSIS_TOPK, *ks]), n)
    next_ids = _next_tokens(tokens, positions, n) if tokens is not None else None

    kl = np.empty(positions)
    dlogit = np.empty(positions)
    dlogit_token = np.zeros(positions, dtype=np.int64)
    sq_err = np.empty(positions)
    energy = np.empty(positions)
    p_next = np.full((2, max(positions - 1, 0)), np.nan)
    tops = {side: np.zeros((positions, depth), dtype=np.int64) for side in ("ref", "cand")}
    shown_k = min(DIAGNOSIS_TOPK, depth)
    top_p = {side: np.zeros((positions, shown_k)) for side in ("ref", "cand")}
    for start in range(0, positions, _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        r = np.where(bad[rows, None], 0.0, ref[rows])
        c = np.where(bad[rows, None], 0.0, cand[rows])
        r_logp, c_logp = _log_softmax(r), _log_softmax(c)
        kl[rows] = _kl_rows(r_logp, c_logp)
        diff, sq_err[rows], energy[rows] = _centered_difference(r, c)
        dlogit_token[rows] = np.argmax(diff, axis=1)
        dlogit[rows] = diff[np.arange(diff.shape[0]), dlogit_token[rows]]
        for side, x, logp in (("ref", r, r_logp), ("cand", c, c_logp)):
            tops[side][rows] = _ordered_topk_rows(x, depth)
            shown = tops[side][rows, :shown_k]
            top_p[side][rows] = np.exp(np.take_along_axis(logp, shown, axis=1))
        if next_ids is not None:
            scored = np.arange(start, min(start + r.shape[0], positions - 1))
            local = scored - start
            p_next[0, scored] = np.exp(r_logp[local, next_ids[scored]])
            p_next[1, scored] = np.exp(c_logp[local, next_ids[scored]])

    kl[bad] = np.inf
    dlogit[bad] = np.inf
    sq_err[bad] = np.inf
    top1 = (tops["ref"][:, 0] == tops["cand"][:, 0]) & ~bad
    overlap: dict[int, np.ndarray] = {}
    for k in ks:
        kk = min(k, n)
        shared = [np.intersect1d(tops["ref"][i, :kk], tops["cand"][i, :kk]).size for i in range(positions)]
        overlap[k] = np.where(bad, 0.0, np.asarray(shared, dtype=np.float64) / kk)

    dp: np.ndarray | None = None
    dp_rms: float | None = None
    if next_ids is not None and positions > 1:
        dp = p_next[1] - p_next[0]
        dp[bad[:-1]] = np.inf
        dp_rms = float(np.sqrt(np.mean(dp**2)))

    excess = np.maximum(_excess_mass(ref_full, n, bad_ref), _excess_mass(cand_full, n, bad_cand))
    worst_dlogit = int(np.argmax(dlogit))
    greedy = None
    if reference_generation is not None or candidate_generation is not None:
        if reference_generation is None or candidate_generation is None:
            raise ValueError("pass both reference_generation and candidate_generation, or neither")
        greedy = greedy_agreement(reference_generation, candidate_generation)
    with np.errstate(divide="ignore", invalid="ignore"):
        nmse_rows = np.where(energy > 0, sq_err / energy, np.where(sq_err > 0, np.inf, 0.0))
    return EquivalenceReport(
        positions=positions,
        vocab_reference=ref_full.shape[1],
        vocab_compared=n,
        vocab_candidate=cand_full.shape[1],
        excess_vocab_mass=float(excess.max()),
        kl_mean=float(kl.mean()),
        kl_p99=float(np.percentile(kl, 99)) if np.isfinite(kl).all() else float("inf"),
        kl_max=float(kl.max()),
        kl_max_position=int(np.argmax(kl)),
        top1_agreement=float(top1.mean()),
        topk_overlap={k: float(v.mean()) for k, v in overlap.items()},
        max_dlogit=float(dlogit[worst_dlogit]),
        max_dlogit_position=worst_dlogit,
        max_dlogit_token=int(dlogit_token[worst_dlogit]),
        nmse=_ratio(float(sq_err.sum()), float(energy.sum())),
        dp_rms=dp_rms,
        greedy=greedy,
        nonfinite_reference=tuple(int(i) for i in np.flatnonzero(bad_ref)),
        nonfinite_candidate=tuple(int(i) for i in np.flatnonzero(bad_cand)),
        kl=kl,
        top1_match=top1,
        overlap=overlap,
        dlogit=dlogit,
        nmse_rows=nmse_rows,
        excess_mass_rows=excess,
        dp=dp,
        reference_top_ids=tops["ref"][:, :shown_k],
        reference_top_probs=top_p["ref"],
        candidate_top_ids=tops["cand"][:, :shown_k],
        candidate_top_probs=top_p["cand"],
    )
