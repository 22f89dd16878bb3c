"""The second model of a synthetic token dump: ``generate_token_dump``'s ``shift`` and
``shift_head`` (the data model is in :mod:`flows.generate.tokens`).

Token t's target probability ``p_t`` falls to ``p_t exp(-s_t)``; the freed mass
``p_t (1 - exp(-s_t))`` goes to a set H of other tokens in proportion to their
probability, so each of them is multiplied by the same

    c_H = (P_H + p_t (1 - exp(-s_t))) / P_H,

``P_H`` being H's mass under the first model, and every token outside H keeps its
probability. The plain shift takes H = every token but the target (``P_H = 1 - p_t``);
``shift_head = m`` takes H = the first model's ranks 1 .. m but the target. Then the
target contributes ``p_t ln(p_t / (p_t exp(-s_t))) = p_t s_t`` to KL(first ‖ shifted),
every j in H ``p_j ln(1 / c_H)`` and every other token 0, so

    KL = p_t s_t - P_H ln c_H
       = p_t (s_t - (1 - exp(-s_t))) + P_H (x - ln(1 + x)),   x = c_H - 1,

two terms that are never negative (``shift_kl``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .streams import stream_key, uniform

__all__ = ["TokenShift", "shift_kl", "shift_tokens"]


@dataclass(frozen=True)
class TokenShift:
    """Each token's shift, float64: the shifted target log-prob, the log-prob rise ``ln c_H``
    of the tokens in H, and KL(first model ‖ shifted model) in nats."""

    target_logp: np.ndarray
    rise: np.ndarray
    true_kl: np.ndarray
    head: int | None  # H is ranks 1 .. head but the target; None: every token but the target

    def raised(self, logp: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """The shifted log-probs of non-target tokens: `logp` and `rank` (1-based, in the
        first model's ranking) are (tokens, entries) arrays."""
        if self.head is None:
            return logp + self.rise[:, None]
        return logp + np.where(rank <= self.head, self.rise[:, None], 0.0)  # + 0.0 keeps the bits


def shift_tokens(seed: int, shift: float, head: int | None, doc: np.ndarray, key: np.ndarray,
                 target_logp: np.ndarray, rank: np.ndarray, head_mass: np.ndarray | None) -> TokenShift:
    """The shift of tokens `key` of documents `doc`: ``s_t = shift * m_d * e_t`` (``m_d``
    uniform in [0.5, 1.5) per document, ``e_t`` exponential with mean 1 per token).

    `target_logp` and `rank` are the first model's target log-prob and rank; with `head`,
    `head_mass` is each token's first-model mass of ranks 1 .. head, target included.
    """
    drop = shift * (0.5 + uniform(doc, stream_key(seed, "doc/shift")))
    drop *= -np.log1p(-uniform(key, stream_key(seed, "token/shift")))
    shifted = target_logp - drop
    if head is None:
        rise = np.log(-np.expm1(shifted)) - np.log(-np.expm1(target_logp))
        return TokenShift(shifted, rise, shift_kl(target_logp, drop), None)
    p = np.exp(target_logp)
    others = head_mass - np.where(rank <= head, p, 0.0)  # P_H
    rise = np.log1p(p * -np.expm1(-drop) / others)
    return TokenShift(shifted, rise, shift_kl(target_logp, drop, others), head)


def shift_kl(target_logp: np.ndarray, drop: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """KL(p ‖ q) in nats when q_t = p_t exp(-drop) and the freed mass goes to tokens of mass
    `others` (P_H; default 1 - p_t, every other token) in proportion (module docstring):
    p_t (s - (1 - e^-s)) + P_H (x - ln(1 + x)), x = p_t (1 - e^-s) / P_H, both terms >= 0."""
    p = np.exp(target_logp)
    freed = -np.expm1(-drop)  # 1 - exp(-s): the share of p_t given to the other tokens
    if others is None:
        others = -np.expm1(target_logp)
    x = p * freed / others
    return np.maximum(p * (drop - freed), 0.0) + np.maximum(others * (x - np.log1p(x)), 0.0)
