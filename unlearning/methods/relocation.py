"""Continual UCE's relocation rounds (unlearning/methods/continual_uce.py, `relocation_rounds`): which tokens
the edit pushes towards an erased concept, and the closed form that holds only that push.

R = I + Δ moves every token x by Δx; push_c(x) = ⟨Δx, u_c⟩_M / ‖u_c‖²_M is how far towards concept c (u_c,
the mean of c's token differences e − ê; M = Σ_l W₀_lᵀ W₀_l, what K/V read), so c's own tokens score about
−1 and a relocating token scores above 0. The rounds hold the tokens pushed by more than τ, either in place
(W x = W₀ x, a keep term beside the broad Gram) or — `relocation_push_only` — only along u_c.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def concept_direction(keys: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """u_c: the mean difference e − ê over a concept's token pairs (rows of `keys`, `anchors`), float64."""
    return (keys.double() - anchors.double()).mean(0)


def pushed_tokens(
    shared: torch.Tensor,
    pool: torch.Tensor,
    fresh: dict,
    base_gram: torch.Tensor,
    threshold: float,
    away_threshold: float = 0.0,
    drawn: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Per erased concept, which rows of `pool` (a boolean mask) R moves towards it by more than `threshold` of
    the concept's own mean shift: push_c(x) = ⟨(R − I)x, u_c⟩_M / ‖u_c‖²_M with u_c = mean(e − ê) over c's token
    pairs and M = Σ_l W₀_lᵀ W₀_l (what K/V read), so the concept's own tokens score about −1 (module docstring).
    With `away_threshold` τ_a > 0 also the rows it moves *away* from the concept by more than τ_a (push < −τ_a): a
    word no request named, carried towards the anchor as if it were the concept — the anchor's flood. With
    `drawn[c]` (given the rows pushed away from c, which of them belong to a prompt the parent draws c for) those
    rows are not held away: there the push away is the erasure of c, not a flood (continual_uce.py docstring)."""
    moved = pool @ (shared - torch.eye(shared.shape[0], dtype=shared.dtype, device=shared.device)).T
    pushed = {}
    for concept, f in fresh.items():
        direction = concept_direction(f.keys, f.anchors)
        metric = base_gram @ direction
        push = (moved @ metric) / (direction @ metric)
        away = push < -away_threshold if away_threshold > 0 else torch.zeros_like(push, dtype=torch.bool)
        if drawn and concept in drawn and away.any():
            away &= ~drawn[concept](away)
        pushed[concept] = (push > threshold) | away
    return pushed


def solve_push_held(
    change: torch.Tensor,
    right: torch.Tensor,
    holds: list[tuple[torch.Tensor, torch.Tensor]],
    base_gram: torch.Tensor,
    relocation_scale: float,
) -> torch.Tensor:
    """R = I + Δ minimising continual_uce.solve()'s objective plus s_r Σ_c Σ_{x ∈ X_c} ‖Π_c Δ x‖²_M: each held
    token's push towards concept c (Π_c, the M-orthogonal projection on u_c; `holds` = [(u_c, X_c = Σ x xᵀ)]) is
    held, the rest of how the edit moves the token is left free — one scalar per token, where the token hold of
    `held_gram` asks W x = W₀ x in every direction. `change` is C = s_e (A − B) and `right` K = s_e B + s_p P +
    s_b G + λI, as solve() builds them.

    With w_c = M u_c / √(u_cᵀ M u_c) and a_c = s_r M⁻¹ w_c, the normal equation is Δ K + Σ_c a_c w_cᵀ Δ X_c = C.
    Its unknowns reduce to the rows y_c = w_cᵀ Δ: Δ = (C − Σ_d a_d y_d X_d) K⁻¹, and
    y_cᵀ + Σ_d (w_cᵀ a_d) K⁻¹ X_d y_dᵀ = K⁻¹ Cᵀ w_c, one linear system of k·D unknowns for k concepts (float64)."""
    size = right.shape[0]
    identity = torch.eye(size, dtype=torch.float64, device=right.device)
    norms = [torch.sqrt(u @ base_gram @ u) for u, _ in holds]
    w = [base_gram @ u / n for (u, _), n in zip(holds, norms)]
    a = [relocation_scale * u / n for (u, _), n in zip(holds, norms)]
    spread = [torch.linalg.solve(right, x) for _, x in holds]  # K⁻¹ X_d
    system = torch.eye(len(holds) * size, dtype=torch.float64, device=right.device)
    for c in range(len(holds)):
        for d in range(len(holds)):
            system[c * size : (c + 1) * size, d * size : (d + 1) * size] += (w[c] @ a[d]) * spread[d]
    rhs = torch.cat([torch.linalg.solve(right, change.T @ w_c) for w_c in w])
    rows = torch.linalg.solve(system, rhs).reshape(len(holds), size)  # y_c
    for a_d, y_d, (_, x_d) in zip(a, rows, holds):
        change = change - torch.outer(a_d, y_d @ x_d)
    return identity + torch.linalg.solve(right, change.T).T  # right is symmetric
