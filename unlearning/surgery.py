"""Gradient surgery for a loss method's step (unlearning/loop.py applies it when `gradient_surgery` is on)."""

from __future__ import annotations

import torch


def surgery_backward(terms: dict[str, torch.Tensor], params: list[torch.nn.Parameter]) -> None:
    """Gradient surgery (restricted gradient, Ko et al. NeurIPS 2024; concept-preserving gradient,
    Wu et al. AAAI 2025): where g_forget · g_preserve < 0, replace g_forget by its projection onto the
    normal plane of g_preserve, g_f ← g_f − (g_f·g_p / ‖g_p‖²) g_p; then g = g_f + g_p + g_reg."""

    def grads(term):
        result = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(result, params)]

    g_forget, g_preserve = grads(terms["forget"]), grads(terms["preserve"])
    g_reg = grads(terms["regularise"]) if "regularise" in terms else [torch.zeros_like(p) for p in params]
    dot = sum((a * b).sum() for a, b in zip(g_forget, g_preserve))
    if dot < 0:
        norm = sum(b.pow(2).sum() for b in g_preserve).clamp_min(1e-20)
        g_forget = [a - dot / norm * b for a, b in zip(g_forget, g_preserve)]
    for param, a, b, c in zip(params, g_forget, g_preserve, g_reg):
        param.grad = a + b + c
