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


def add_holds(
    pushed: dict[str, torch.Tensor],
    pool: torch.Tensor,
    push_holds: dict[str, torch.Tensor],
    held_gram: torch.Tensor | None,
    *,
    push_only: bool,
    scale: float,
) -> tuple[torch.Tensor | None, int]:
    """One relocation round's holds from `pushed_tokens`' masks: with `push_only` each concept's push held on the
    tokens pushed towards (or away from) it (`push_holds[c]` += Σ x xᵀ, updated in place), otherwise every
    selected token held in place once (`held_gram` += s_r Σ x xᵀ). Returns (held_gram, tokens held this round)."""
    if push_only:
        count = 0
        for concept, mask in pushed.items():
            rows = pool[mask]
            count += len(rows)
            push_holds[concept] = push_holds.get(concept, 0) + rows.T @ rows
        return held_gram, count
    rows = pool[torch.stack(list(pushed.values())).any(0)]
    more = scale * rows.T @ rows
    return (more if held_gram is None else held_gram + more), len(rows)


def relocation_rounds(
    shared: torch.Tensor,
    relocation_pool: torch.Tensor,
    watched: dict,
    base_gram: torch.Tensor,
    hyper: dict,
    drawn: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None,
    solve_again: Callable[..., torch.Tensor],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Continual UCE's `relocation_rounds` (its docstring): each round finds the pool tokens R pushes towards (or,
    with τ_a, away from) a watched concept (`pushed_tokens`), adds them to the holds (`add_holds`) and solves
    again (`solve_again(held_gram, push_holds)`), until a round finds none. Returns (R, metrics): how many tokens
    were held, and with `drawn` how many away-pushed tokens the last screened round left free."""
    pool = relocation_pool.reshape(-1, relocation_pool.shape[-1]).double()
    held_gram, push_holds, held_tokens, left_free = None, {}, 0, [0]
    if drawn:  # count what the screen leaves free; the last round's count is what the solve left free

        def counted(screen: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
            def counting(rows: torch.Tensor) -> torch.Tensor:
                found = screen(rows)
                left_free[0] = int(found.sum())
                return found

            return counting

        drawn = {concept: counted(screen) for concept, screen in drawn.items()}
    for _ in range(int(hyper["relocation_rounds"])):
        pushed = pushed_tokens(
            shared,
            pool,
            watched,
            base_gram,
            hyper["relocation_threshold"],
            hyper["relocation_away_threshold"],
            drawn,
        )
        if not any(mask.any() for mask in pushed.values()):
            break
        held_gram, count = add_holds(
            pushed,
            pool,
            push_holds,
            held_gram,
            push_only=bool(hyper["relocation_push_only"]),
            scale=hyper["relocation_scale"],
        )
        held_tokens += count
        shared = solve_again(held_gram, push_holds)
    metrics = {"relocation_held_tokens": float(held_tokens)}
    return shared, metrics | ({"relocation_drawn_tokens": float(left_free[0])} if drawn else {})
