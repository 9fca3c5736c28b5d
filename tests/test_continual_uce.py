"""Continual UCE (unlearning/methods/continual_uce.py): the closed form by hand, a sequence equal to
erasing everything at once, RECE's adversarial embedding, and the lineage terms through the loop."""

import numpy as np
import pytest
import torch

from tests.tiny_models import PLAIN_CLOSED_FORM, UNJUDGED, build_tiny_base, shapes_prompts_for
from unlearning.loop import LINEAGE_FILE, UnlearnConfig, load_lineage, run_unlearning
from unlearning.methods import continual_uce as cu
from unlearning.methods.context import EditContext, EncodedPairs
from unlearning.methods.relocation import pushed_tokens
from unlearning.sampling import load_model


def _context(
    weight, base, target, anchor, words, concept, lineage=None, preserve=None, hyper=None, anchor_word="", earlier=()
):
    return EditContext(
        trained={"mid.attn2.to_k.weight": weight},
        base_values={"mid.attn2.to_k.weight": base},
        target_embeds=target,
        anchor_embeds=anchor,
        target_tokens=words,
        anchor_tokens=words,
        preserve_embeds=torch.zeros(1, 1, target.shape[-1]) if preserve is None else preserve,
        replay_embeds=torch.zeros(0, 1, target.shape[-1]),
        hyper={**PLAIN_CLOSED_FORM, **(hyper or {})},
        concept=concept,
        anchor=anchor_word,
        earlier=earlier,
        lineage=lineage,
    )


def test_solve_by_hand():
    """One pair e = (1, 0), ê = (0, 1), no preserve set, λ = 1, s_e = 1: A = ê eᵀ = [[0, 0], [1, 0]],
    B = e eᵀ = [[1, 0], [0, 0]], R = (A + I)(B + I)⁻¹ = [[1, 0], [1, 1]] · diag(1/2, 1) = [[0.5, 0], [0.5, 1]];
    so R e = (0.5, 0.5): halfway to ê, as the ridge λ = 1 asks for a single pair."""
    e, e_hat = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    cross, gram = cu.concept_terms(e, e_hat)
    shared = cu.solve(
        cross, gram, torch.zeros(2, 2, dtype=torch.float64), erase_scale=1.0, preserve_scale=0.0, lambda_identity=1.0
    )
    torch.testing.assert_close(shared, torch.tensor([[0.5, 0.0], [0.5, 1.0]], dtype=torch.float64))


def test_the_broad_gram_holds_what_the_vocabulary_uses():
    """The same pair with a broad Gram G = g gᵀ, g = (1, 1)/√2, s_b = 1: the keep term becomes I + G and R moves
    e less than halfway, while R g stays nearer g than without G (the broad term holds it)."""
    e, e_hat = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    cross, gram = cu.concept_terms(e, e_hat)
    g = torch.tensor([[1.0, 1.0]], dtype=torch.float64) / 2**0.5
    zero = torch.zeros(2, 2, dtype=torch.float64)
    scales = {"erase_scale": 1.0, "preserve_scale": 0.0, "lambda_identity": 1.0}
    plain = cu.solve(cross, gram, zero, **scales)
    broad = cu.solve(cross, gram, zero, broad_gram=g.T @ g, broad_scale=1.0, **scales)
    # by hand: M = B + I + G = [[2.5, 0.5], [0.5, 1.5]], left = A + I + G = [[1.5, 0.5], [1.5, 1.5]]
    expected = torch.tensor([[1.5, 0.5], [1.5, 1.5]], dtype=torch.float64) @ torch.linalg.inv(
        torch.tensor([[2.5, 0.5], [0.5, 1.5]], dtype=torch.float64)
    )
    torch.testing.assert_close(broad, expected)
    assert (broad @ g[0] - g[0]).norm() < (plain @ g[0] - g[0]).norm()


def test_the_null_space_constraint_leaves_the_broad_directions_alone():
    """SPEED's constraint: with V = I the constrained solve is the plain one; with V = the null space of G,
    R u = u for every u the broad Gram uses (R = I + X Vᵀ and Vᵀu = 0)."""
    torch.manual_seed(0)
    keys, anchors = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    cross, gram = cu.concept_terms(keys, anchors)
    preserve = torch.eye(4, dtype=torch.float64) * 0.5
    scales = {"erase_scale": 1.0, "preserve_scale": 0.1, "lambda_identity": 0.1}
    identity = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(
        cu.solve(cross, gram, preserve, null_space=identity, **scales), cu.solve(cross, gram, preserve, **scales)
    )
    broad = torch.diag(torch.tensor([10.0, 5.0, 0.01, 0.001], dtype=torch.float64))  # uses the first two axes
    basis = cu.null_space_of(broad, 0.99)
    torch.testing.assert_close(basis @ basis.T, torch.diag(torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)))
    shared = cu.solve(cross, gram, preserve, broad_gram=broad, broad_scale=1.0, null_space=basis, **scales)
    torch.testing.assert_close(shared[:, :2], identity[:, :2])


def test_a_sequence_equals_erasing_everything_at_once_and_revoking_drops_one_concept():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=generator)
    words = torch.tensor([[False, True, False]])
    pairs = {c: (torch.randn(1, 3, 4, generator=generator), torch.randn(1, 3, 4, generator=generator)) for c in "ab"}
    preserve = torch.randn(2, 3, 4, generator=generator)

    weight = torch.nn.Parameter(base.clone())
    first = _context(weight, base, *pairs["a"], words, "a", preserve=preserve)
    cu.edit(first)
    second = _context(weight, base, *pairs["b"], words, "b", lineage=first.lineage_out, preserve=preserve)
    cu.edit(second)

    terms = second.lineage_out
    assert {cu.concept_of(k) for k in terms} == {"a", "b"}
    p = preserve.reshape(-1, 4).double()
    at_once = base.double() @ cu.solve(
        terms["a" + cu.CROSS] + terms["b" + cu.CROSS],
        terms["a" + cu.GRAM] + terms["b" + cu.GRAM],
        p.T @ p,
        erase_scale=1.0,
        preserve_scale=0.1,
        lambda_identity=0.1,
    )
    torch.testing.assert_close(weight.detach().double(), at_once, rtol=1e-5, atol=1e-6)
    # the order does not matter: b then a gives the same weights
    other = torch.nn.Parameter(base.clone())
    b_first = _context(other, base, *pairs["b"], words, "b", preserve=preserve)
    cu.edit(b_first)
    cu.edit(_context(other, base, *pairs["a"], words, "a", lineage=b_first.lineage_out, preserve=preserve))
    torch.testing.assert_close(other.detach(), weight.detach(), rtol=1e-5, atol=1e-6)
    # revoking b = re-solving with a's terms only = erasing a alone
    only_a = base.double() @ cu.solve(
        terms["a" + cu.CROSS], terms["a" + cu.GRAM], p.T @ p, erase_scale=1.0, preserve_scale=0.1, lambda_identity=0.1
    )
    alone = torch.nn.Parameter(base.clone())
    cu.edit(_context(alone, base, *pairs["a"], words, "a", preserve=preserve))
    torch.testing.assert_close(alone.detach().double(), only_a, rtol=1e-5, atol=1e-6)


def test_earlier_concepts_are_solved_again_from_the_request_s_pairs_of_them():
    """Erase a towards x, then x: a's kept terms would still map a's prompts to x's (the concept just
    erased), so they are computed again from a's pairs of the second request (towards y) — the same terms
    as erasing a towards y from scratch. Erasing b instead (x left alone): a's terms come from the
    request's pairs too (phrasings that avoid b, where the parent's may name it), not from the parent."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(6, 4, generator=generator)
    words = torch.tensor([[False, True, False]])
    a, a_as_x, a_as_y, x, x_as_z, b, b_as_z, a2, a2_as_x = (torch.randn(1, 3, 4, generator=generator) for _ in range(9))
    a_towards_y = EncodedPairs("a", a, a_as_y, words, words, "y")  # what a later request pairs a with

    first = _context(torch.nn.Parameter(base.clone()), base, a, a_as_x, words, "a", anchor_word="x")
    cu.edit(first)
    assert cu.anchor_of(first.lineage_out, "a") == "x"

    def later(concept, target, anchor, anchor_word, earlier):
        ctx = _context(
            torch.nn.Parameter(base.clone()),
            base,
            target,
            anchor,
            words,
            concept,
            first.lineage_out,
            None,
            None,
            anchor_word,
            earlier,
        )
        cu.edit(ctx)
        return ctx

    def from_scratch(target, anchor, anchor_word):
        ctx = _context(torch.nn.Parameter(base.clone()), base, target, anchor, words, "a", anchor_word=anchor_word)
        cu.edit(ctx)
        return ctx.lineage_out

    erase_x = later("x", x, x_as_z, "z", (a_towards_y,))
    assert cu.anchor_of(erase_x.lineage_out, "a") == "y" and cu.anchor_of(erase_x.lineage_out, "x") == "z"
    expected = from_scratch(a, a_as_y, "y")
    for term in (cu.CROSS, cu.GRAM):
        torch.testing.assert_close(erase_x.lineage_out["a" + term], expected["a" + term])

    erase_b = later("b", b, b_as_z, "z", (EncodedPairs("a", a2, a2_as_x, words, words, "x"),))
    assert cu.anchor_of(erase_b.lineage_out, "a") == "x"
    expected = from_scratch(a2, a2_as_x, "x")
    for term in (cu.CROSS, cu.GRAM):
        torch.testing.assert_close(erase_b.lineage_out["a" + term], expected["a" + term])
        assert not torch.equal(erase_b.lineage_out["a" + term], first.lineage_out["a" + term])
    # without pairs of a, the parent's terms of a are kept as they are
    kept = later("b", b, b_as_z, "z", ())
    for term in (cu.CROSS, cu.GRAM):
        torch.testing.assert_close(kept.lineage_out["a" + term], first.lineage_out["a" + term])


def test_the_adversarial_embedding_minimises_rece_objective():
    """e′ = argmin Σ_l ‖W₀_l R e′ − W₀_l e‖² + ρ‖e′‖²: the gradient 2 Rᵀ M (R e′ − e) + 2ρ e′ vanishes there."""
    generator = torch.Generator().manual_seed(1)
    layers = [torch.randn(5, 4, generator=generator, dtype=torch.float64) for _ in range(2)]
    shared = torch.eye(4, dtype=torch.float64) + 0.3 * torch.randn(4, 4, generator=generator, dtype=torch.float64)
    gram = sum(w.T @ w for w in layers)
    e = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    adversarial = cu.adversarial_embeddings(e, shared, gram, ridge=0.1)
    rho = 0.1 * torch.trace(gram) / 4
    gradient = (shared.T @ gram @ (shared @ adversarial.T - e.T)).T + rho * adversarial
    torch.testing.assert_close(gradient, torch.zeros_like(gradient), atol=1e-9, rtol=0)


def test_hardening_rounds_lower_the_residual_of_adversarial_embeddings():
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(6, 4, generator=generator)
    target, anchor = torch.randn(1, 3, 4, generator=generator), torch.randn(1, 3, 4, generator=generator)
    words = torch.tensor([[False, True, False]])
    plain, hardened = torch.nn.Parameter(base.clone()), torch.nn.Parameter(base.clone())
    cu.edit(_context(plain, base, target, anchor, words, "a", hyper={"adversarial_rounds": 0}))
    cu.edit(_context(hardened, base, target, anchor, words, "a", hyper={"adversarial_rounds": 3}))
    gram = (base.T @ base).double()

    def comeback(weight):  # how far the best adversarial input brings the base's concept output back
        shared = torch.linalg.lstsq(base.double(), weight.detach().double()).solution
        e = target[0].double()
        adv = cu.adversarial_embeddings(e, shared, gram, ridge=0.1)
        return float(((base.double() @ shared @ adv.T) - (base.double() @ e.T)).pow(2).sum())

    assert comeback(hardened) < comeback(plain)


@pytest.mark.slow
def test_the_loop_writes_the_lineage_and_the_next_step_reads_it(tmp_path):
    tiny = build_tiny_base(tmp_path / "tiny-sd")
    pipe = load_model(tiny)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    # the default method, without the judged screen (no judge is given here)
    common = dict(method="continual-uce", prompts_per_concept=6, preserve_per_concept=1, hyper=UNJUDGED)
    first = UnlearnConfig(concept="circle", **common)
    summary = run_unlearning(
        pipe,
        first,
        tmp_path / "1",
        prompts=shapes_prompts_for(first),
        model_sha="tiny",
        base_values=base,
        progress=False,
    )
    assert summary["lineage"]["concepts"] == ["circle"] and (tmp_path / "1" / LINEAGE_FILE).is_file()
    second = UnlearnConfig(concept="striped", erased=("circle",), **common)
    summary = run_unlearning(
        pipe,
        second,
        tmp_path / "2",
        prompts=shapes_prompts_for(second),
        model_sha="tiny-1",
        base_values=base,
        progress=False,
        lineage=load_lineage(tmp_path / "1" / LINEAGE_FILE),
    )
    assert summary["lineage"]["concepts"] == ["circle", "striped"]
    kept = load_lineage(tmp_path / "2" / LINEAGE_FILE)
    # circle's terms are computed again from the second request's phrasings (which avoid striped)
    assert not torch.equal(kept["circle" + cu.CROSS], load_lineage(tmp_path / "1" / LINEAGE_FILE)["circle" + cu.CROSS])
    assert cu.anchor_of(kept, "circle") == "square" and cu.anchor_of(kept, "striped") == "solid"
    second_weights = {k: v.clone() for k, v in pipe.unet.state_dict().items() if ".attn2.to_" in k}
    # erasing square, circle's anchor: circle's terms are solved again towards the next surrogate
    third = UnlearnConfig(concept="square", erased=("circle", "striped"), **common)
    run_unlearning(
        pipe,
        third,
        tmp_path / "4",
        prompts=shapes_prompts_for(third),
        model_sha="tiny-2",
        base_values=base,
        progress=False,
        lineage=kept,
    )
    after = load_lineage(tmp_path / "4" / LINEAGE_FILE)
    assert cu.anchor_of(after, "circle") == "triangle" and cu.anchor_of(after, "striped") == "solid"
    assert not torch.equal(after["circle" + cu.CROSS], kept["circle" + cu.CROSS])
    # the sequence equals erasing circle and striped at once: from the base without the parent's terms,
    # the same lineage and the same weights
    at_once = load_model(tiny)
    summary = run_unlearning(
        at_once,
        second,
        tmp_path / "3",
        prompts=shapes_prompts_for(second),
        model_sha="tiny",
        base_values=base,
        progress=False,
    )
    assert summary["lineage"]["concepts"] == ["circle", "striped"]
    together = load_lineage(tmp_path / "3" / LINEAGE_FILE)
    for key in ("circle" + cu.CROSS, "circle" + cu.GRAM, "striped" + cu.CROSS, "striped" + cu.GRAM):
        torch.testing.assert_close(together[key], kept[key])
    for name, value in second_weights.items():
        torch.testing.assert_close(at_once.unet.state_dict()[name], value)


@pytest.mark.parametrize("extra", ["prefixed", "variants"])
def test_more_pairs_join_the_concept_s_terms(tiny_base, tmp_path, extra):
    """More target/anchor pairs are solved over — `prefixed_prompts` (unlearning/prompts.py `with_prefixes`) and
    `variant_prompts` (`with_variants`: the word a rule-made variant of the method's half): the summary counts
    them and the concept's Gram holds more token pairs."""
    grams = {}
    for count in (0, 5):
        pipe = load_model(tiny_base)
        base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
        config = UnlearnConfig(
            concept="circle",
            method="continual-uce",
            prompts_per_concept=6,
            preserve_per_concept=1,
            prefixed_prompts=count if extra == "prefixed" else 0,
            broad_prompts=0,
            hyper={**PLAIN_CLOSED_FORM, "variant_prompts": count if extra == "variants" else 0},
        )
        summary = run_unlearning(
            pipe,
            config,
            tmp_path / str(count),
            prompts=shapes_prompts_for(config),
            model_sha="tiny",
            base_values=base,
            progress=False,
        )
        assert summary["prompts"]["pairs"] == 6 + count
        grams[count] = load_lineage(tmp_path / str(count) / LINEAGE_FILE)["circle" + cu.GRAM]
    assert torch.trace(grams[5]) > torch.trace(grams[0])  # more token pairs in the Gram B_c


def test_the_broad_gram_is_cached_under_the_base_and_its_prompts(tiny_base, tmp_path, monkeypatch):
    """The broad Gram is encoded once per (base, prompts): a second request reads it from the cache without the
    text encoder; another base identity or other prompts encode again; no cache folder: always encoded."""
    from unlearning import data
    from unlearning.conditioning import encode

    pipe = load_model(tiny_base)
    prompts, others = ["a ridge", "the paper in the middle"], ["a horse"]
    first = data.broad_gram(pipe, prompts, base_sha="base-a", cache_dir=tmp_path)
    torch.testing.assert_close(first, data.gram(pipe, prompts))
    calls = []
    monkeypatch.setattr(data, "encode", lambda *a, **k: calls.append(a[1]) or encode(*a, **k))
    torch.testing.assert_close(data.broad_gram(pipe, prompts, base_sha="base-a", cache_dir=tmp_path), first)
    assert calls == []
    data.broad_gram(pipe, prompts, base_sha="base-b", cache_dir=tmp_path)
    data.broad_gram(pipe, others, base_sha="base-a", cache_dir=tmp_path)
    data.broad_gram(pipe, prompts, base_sha="base-a", cache_dir=None)
    assert calls == [prompts, others, prompts]


def test_relocation_rounds_hold_a_token_the_edit_pushes_towards_the_concept():
    """e = (1, 0, 0) is erased towards ê = (0, 1, 0) with W₀ = I and no broad Gram; the pool token x = (−1, 0, 1)
    has a negative coefficient on e, so R moves it by −a(ê − e): towards the concept, by more than τ of e's own
    shift (push 0.91 > τ = 0.25). One relocation round holds it in the keep term: its push falls below τ, and e
    is still erased. Holding only its push (`relocation_push_only`) does the same here, where R moves x along the
    push alone."""
    e, e_hat, x = torch.tensor([[[1.0, 0.0, 0.0]]]), torch.tensor([[[0.0, 1.0, 0.0]]]), torch.tensor([[-1.0, 0.0, 1.0]])
    words = torch.ones(1, 1, dtype=torch.bool)

    def solved(rounds: int, push_only: float = 0.0) -> tuple[torch.Tensor, dict]:
        weight, base = torch.nn.Parameter(torch.eye(3)), torch.eye(3)
        hyper = {"adversarial_rounds": 0, "relocation_rounds": rounds, "relocation_push_only": push_only}
        ctx = _context(weight, base, e, e_hat, words, "circle", hyper=hyper)
        ctx.relocation_pool = x.unsqueeze(0)
        metrics = cu.edit(ctx)
        return weight.detach().double(), metrics

    def push(shared: torch.Tensor) -> float:
        u = (e - e_hat)[0, 0].double()
        return float(((shared - torch.eye(3, dtype=torch.float64)) @ x[0].double()) @ u / (u @ u))

    plain, plain_metrics = solved(0)
    held, held_metrics = solved(1)
    push_held, push_metrics = solved(1, push_only=1.0)
    assert push(plain) > 0.25 and plain_metrics["relocation_held_tokens"] == 0
    assert push(held) < 0.25 and held_metrics["relocation_held_tokens"] == 1  # 0.91 -> 0.03 by hand
    assert push(push_held) < 0.25 and push_metrics["relocation_held_tokens"] == 1
    fresh = {"circle": cu.FreshTerms.of(_context(torch.nn.Parameter(torch.eye(3)), torch.eye(3), e, e_hat, words, ""))}
    selected = pushed_tokens(plain, x.double(), fresh, torch.eye(3, dtype=torch.float64), 0.25)
    assert selected["circle"].tolist() == [True]
    assert float((held @ e[0, 0].double())[1]) > 0.8  # e still goes most of the way to ê (0.84)
    torch.testing.assert_close(push_held, held)


def test_holding_only_the_push_leaves_the_rest_of_the_token_free():
    """A concept of two tokens, e₁ = (1, 0, 0, 0) → (0, 1, 0, 0) and e₂ = (0, 0, 1, 0) → (0, 0, 0, 1), W₀ = I: R
    moves x = (−1, 0, 0, 1) along ê₁ − e₁, which is partly the concept's push (u = mean(e − ê)) and partly not.
    The token hold stops all of that move, the push hold only the push: x's push is held alike (below τ), x keeps
    a move across u (it is not held in place), and the concept's own pairs are solved closer (lower residual)."""
    e = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])
    e_hat = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]])
    x = torch.tensor([[-1.0, 0.0, 0.0, 1.0]])
    words = torch.ones(1, 2, dtype=torch.bool)
    u = (e - e_hat)[0].mean(0).double()

    def solved(push_only: float) -> tuple[torch.Tensor, dict]:
        weight = torch.nn.Parameter(torch.eye(4))
        hyper = {"adversarial_rounds": 0, "relocation_rounds": 1, "relocation_push_only": push_only}
        ctx = _context(weight, torch.eye(4), e, e_hat, words, "circle", hyper=hyper)
        ctx.relocation_pool = x.unsqueeze(0)
        metrics = cu.edit(ctx)
        moved = (weight.detach().double() - torch.eye(4, dtype=torch.float64)) @ x[0].double()
        return moved, metrics

    token_moved, token_metrics = solved(0.0)
    push_moved, push_metrics = solved(1.0)
    assert float(token_moved @ u / (u @ u)) < 0.25 and float(push_moved @ u / (u @ u)) < 0.25
    across = lambda moved: moved - (moved @ u) / (u @ u) * u  # noqa: E731
    assert float(across(token_moved).norm()) < 0.05 < float(across(push_moved).norm())
    assert push_metrics["erase_residual"] < token_metrics["erase_residual"]  # 0.0145 against 0.0176


def test_the_push_held_solve_is_the_objectives_minimum():
    """solve's R = I + Δ with push holds (relocation.py solve_push_held) zeroes the gradient of the objective it
    states, written out term by term over two layers of different widths (so M is not I) and two concepts with
    their own held tokens: s_e Σ‖W₀((I+Δ)e − ê)‖² + s_p Σ‖W₀Δp‖² + s_b Σ‖W₀Δg‖² + λ Σ_l ‖W₀_l Δ‖²_F
    + s_r Σ_c Σ_x ⟨Δx, u_c⟩²_M / ‖u_c‖²_M."""
    torch.manual_seed(0)
    size = 5
    layers = [torch.randn(4, size, dtype=torch.float64), torch.randn(7, size, dtype=torch.float64)]
    metric = sum(w.T @ w for w in layers)
    e, e_hat = torch.randn(6, size, dtype=torch.float64), torch.randn(6, size, dtype=torch.float64)
    p, g = torch.randn(3, size, dtype=torch.float64), torch.randn(8, size, dtype=torch.float64)
    held = {
        "circle": (torch.randn(size, dtype=torch.float64), torch.randn(4, size, dtype=torch.float64)),
        "star": (torch.randn(size, dtype=torch.float64), torch.randn(2, size, dtype=torch.float64)),
    }
    scales = {"erase_scale": 1.5, "preserve_scale": 0.3, "lambda_identity": 0.2, "broad_scale": 0.7}
    cross, gram = cu.concept_terms(e, e_hat)
    shared = cu.solve(
        cross,
        gram,
        p.T @ p,
        push_holds=[(u, x.T @ x) for u, x in held.values()],
        metric=metric,
        relocation_scale=2.0,
        broad_gram=g.T @ g,
        **scales,
    )
    delta = (shared - torch.eye(size, dtype=torch.float64)).requires_grad_(True)

    def sq(rows):  # Σ over layers and rows of ‖W₀_l r‖²
        return sum((rows @ w.T).pow(2).sum() for w in layers)

    objective = (
        scales["erase_scale"] * sq(e + e @ delta.T - e_hat)
        + scales["preserve_scale"] * sq(p @ delta.T)
        + scales["broad_scale"] * sq(g @ delta.T)
        + scales["lambda_identity"] * sum((w @ delta).pow(2).sum() for w in layers)
        + 2.0 * sum(((x @ delta.T) @ metric @ u).pow(2).sum() / (u @ metric @ u) for u, x in held.values())
    )
    (gradient,) = torch.autograd.grad(objective, delta)
    assert float(gradient.abs().max()) < 1e-8 * float(objective)
    unheld = cu.solve(cross, gram, p.T @ p, broad_gram=g.T @ g, **scales)
    assert float((unheld - shared).abs().max()) > 1e-3  # the holds change the solution


def test_relocation_current_only_watches_the_request_s_concept_alone():
    """Circle was erased earlier, e₁ = (1, 0, 0, 0) → (0, 1, 0, 0); this request erases striped, e₂ = (0, 0, 1, 0)
    → (0, 0, 0, 1), W₀ = I. The pool token x = (−1, 0, 0, 0) is pushed towards circle (its coefficient on e₁ is
    negative) and not towards striped. Watching every concept, a round holds it; watching only this request's
    (`relocation_current_only`), it is left free: its push towards circle stays above τ and none is held."""
    words = torch.ones(1, 1, dtype=torch.bool)
    e1, e1_hat = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]), torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])
    e2, e2_hat = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]]), torch.tensor([[[0.0, 0.0, 0.0, 1.0]]])
    x = torch.tensor([[-1.0, 0.0, 0.0, 0.0]])
    circle = EncodedPairs("circle", e1, e1_hat, words, words, "square")

    def solved(current_only: float) -> tuple[float, dict]:
        weight = torch.nn.Parameter(torch.eye(4))
        hyper = {"adversarial_rounds": 0, "relocation_rounds": 1, "relocation_current_only": current_only}
        ctx = _context(weight, torch.eye(4), e2, e2_hat, words, "striped", hyper=hyper, earlier=(circle,))
        ctx.relocation_pool = x.unsqueeze(0)
        metrics = cu.edit(ctx)
        u = (e1 - e1_hat)[0, 0].double()
        moved = (weight.detach().double() - torch.eye(4, dtype=torch.float64)) @ x[0].double()
        return float(moved @ u / (u @ u)), metrics

    push_all, metrics_all = solved(0.0)
    push_current, metrics_current = solved(1.0)
    assert metrics_all["relocation_held_tokens"] == 1 and push_all < 0.25
    assert metrics_current["relocation_held_tokens"] == 0 and push_current > 0.25


def test_relocation_away_threshold_also_holds_a_token_carried_towards_the_anchor():
    """e = (1, 0, 0) is erased towards ê = (0, 1, 0), W₀ = I; the pool token x = (1, 0, 1) shares e's direction, so
    R carries it towards ê as if it were the concept (push −0.91 < −τ): the anchor's flood on a word no request
    named. The one-sided rounds leave it (a push away from the concept); `relocation_away_threshold` τ_a = 0.25
    holds it — its push comes back inside τ_a — and τ_a = 0.95 does not (−0.91 is not beyond it); e is still
    erased."""
    e, e_hat, x = torch.tensor([[[1.0, 0.0, 0.0]]]), torch.tensor([[[0.0, 1.0, 0.0]]]), torch.tensor([[1.0, 0.0, 1.0]])
    words = torch.ones(1, 1, dtype=torch.bool)
    u = (e - e_hat)[0, 0].double()

    def solved(away: float) -> tuple[float, dict, torch.Tensor]:
        weight = torch.nn.Parameter(torch.eye(3))
        hyper = {"adversarial_rounds": 0, "relocation_rounds": 1, "relocation_push_only": 1.0}
        ctx = _context(
            weight, torch.eye(3), e, e_hat, words, "circle", hyper={**hyper, "relocation_away_threshold": away}
        )
        ctx.relocation_pool = x.unsqueeze(0)
        metrics = cu.edit(ctx)
        shared = weight.detach().double()
        moved = (shared - torch.eye(3, dtype=torch.float64)) @ x[0].double()
        return float(moved @ u / (u @ u)), metrics, shared

    push_one_way, metrics_one_way, _ = solved(0.0)
    push_both, metrics_both, shared = solved(0.25)
    push_beyond, metrics_beyond, _ = solved(0.95)
    assert push_one_way < -0.25 and metrics_one_way["relocation_held_tokens"] == 0
    assert push_beyond == push_one_way and metrics_beyond["relocation_held_tokens"] == 0
    assert -0.25 < push_both < 0.25 and metrics_both["relocation_held_tokens"] == 1
    assert float((shared @ e[0, 0].double())[1]) > 0.8  # e still goes most of the way to ê


def test_relocation_away_screen_leaves_free_a_token_of_a_prompt_the_parent_draws_the_concept_for():
    """The setting of the test above (x = (1, 0, 1) carried towards the anchor, push −0.91) with τ_a 0.25 and
    `relocation_away_screen`: where the parent's image of x's prompt shows the concept, the push away is the
    erasure, and x is not held (its push stays beyond τ_a); where it does not, x is the flood and is held. The
    screen is asked about x's row only; without a judge the option is one clear error."""
    e, e_hat, x = torch.tensor([[[1.0, 0.0, 0.0]]]), torch.tensor([[[0.0, 1.0, 0.0]]]), torch.tensor([[1.0, 0.0, 1.0]])
    words = torch.ones(1, 1, dtype=torch.bool)
    u = (e - e_hat)[0, 0].double()
    hyper = {
        "adversarial_rounds": 0,
        "relocation_rounds": 1,
        "relocation_push_only": 1.0,
        "relocation_away_threshold": 0.25,
        "relocation_away_screen": 1.0,
    }
    asked = []

    def solved(parent_draws: bool | None) -> tuple[float, dict]:
        weight = torch.nn.Parameter(torch.eye(3))
        ctx = _context(weight, torch.eye(3), e, e_hat, words, "circle", hyper=hyper)
        ctx.relocation_pool = x.unsqueeze(0)
        if parent_draws is not None:
            ctx.relocation_drawn = lambda rows: asked.append(rows.clone()) or rows & parent_draws
        metrics = cu.edit(ctx)
        moved = (weight.detach().double() - torch.eye(3, dtype=torch.float64)) @ x[0].double()
        return float(moved @ u / (u @ u)), metrics

    push_drawn, metrics_drawn = solved(True)
    push_flood, metrics_flood = solved(False)
    assert push_drawn < -0.25 and metrics_drawn["relocation_held_tokens"] == 0
    assert metrics_drawn["relocation_drawn_tokens"] == 1
    assert -0.25 < push_flood < 0.25 and metrics_flood["relocation_held_tokens"] == 1
    assert metrics_flood["relocation_drawn_tokens"] == 0
    assert all(rows.tolist() == [True] for rows in asked)
    with pytest.raises(ValueError, match="no judge"):
        solved(None)


def test_rows_drawn_judges_each_pool_prompt_once_and_maps_its_rows():
    """unlearning/data.py `rows_drawn`: a pool of three prompts, two rows each; asking about rows of prompts 0 and
    2 judges those two prompts (not 1), marks every asked row of a drawn prompt, and asking again judges nothing."""
    from unlearning.data import rows_drawn

    judged = []

    def parent(prompts: list[str]) -> np.ndarray:
        judged.append(list(prompts))
        return np.array([p == "a coin" for p in prompts])

    drawn = rows_drawn(["a coin", "a box", "a hat"], 2, parent)
    rows = torch.tensor([True, True, False, False, False, True])
    assert drawn(rows).tolist() == [True, True, False, False, False, False]
    assert drawn(rows).tolist() == [True, True, False, False, False, False]
    assert judged == [["a coin", "a hat"]]


def test_earlier_scale_weighs_an_earlier_concept_s_pairs_against_this_request_s():
    """Circle erased earlier, e₁ = (1, 0, 0) → (0, 0, 1); this request erases striped, e₂ = (1, 1, 0)/√2 → (0, 1, 0),
    W₀ = I: the two pairs compete along (1, 0, 0). With `earlier_scale` 10 the solve favours circle's pair (R e₁
    lands nearer ê₁) and striped's lands farther from ê₂ than with equal weights; the lineage keeps the terms
    unweighted, so a later request weighs them anew."""
    words = torch.ones(1, 1, dtype=torch.bool)
    e1, e1_hat = torch.tensor([[[1.0, 0.0, 0.0]]]), torch.tensor([[[0.0, 0.0, 1.0]]])
    e2, e2_hat = torch.tensor([[[2**-0.5, 2**-0.5, 0.0]]]), torch.tensor([[[0.0, 1.0, 0.0]]])
    circle = EncodedPairs("circle", e1, e1_hat, words, words, "square")

    def misses(scale: float) -> tuple[float, float, dict]:
        weight = torch.nn.Parameter(torch.eye(3))
        ctx = _context(
            weight,
            torch.eye(3),
            e2,
            e2_hat,
            words,
            "striped",
            hyper={"adversarial_rounds": 0, "earlier_scale": scale},
            earlier=(circle,),
        )
        cu.edit(ctx)
        shared = weight.detach()
        return float((shared @ e1[0, 0] - e1_hat[0, 0]).norm()), float((shared @ e2[0, 0] - e2_hat[0, 0]).norm()), ctx

    circle_equal, striped_equal, equal = misses(1.0)
    circle_heavy, striped_heavy, heavy = misses(10.0)
    assert circle_heavy < circle_equal and striped_heavy > striped_equal
    torch.testing.assert_close(heavy.lineage_out["circle" + cu.GRAM], equal.lineage_out["circle" + cu.GRAM])


def test_adversarial_words_only_hardens_the_concept_word_s_rows_alone():
    """A prompt of a context token and the concept word (rows of uce.aligned_pairs): RECE's round adds one
    adversarial row per pair row, or with `adversarial_words_only` one for the word's row alone, so the lineage's
    Gram B_c grows by less, and the word-row mask finds exactly the word's token."""
    generator = torch.Generator().manual_seed(5)
    target, anchor = torch.randn(1, 2, 3, generator=generator), torch.randn(1, 2, 3, generator=generator)
    words = torch.tensor([[False, True]])
    fresh = cu.FreshTerms.of(EncodedPairs("circle", target, anchor, words, words, "square"))
    assert fresh.word_rows.tolist() == [False, True] and torch.equal(fresh.keys[1], target[0, 1])

    def gram_trace(rounds: int, words_only: float) -> float:
        hyper = {"adversarial_rounds": rounds, "adversarial_words_only": words_only}
        ctx = _context(torch.nn.Parameter(torch.eye(3)), torch.eye(3), target, anchor, words, "circle", hyper=hyper)
        cu.edit(ctx)
        return float(torch.trace(ctx.lineage_out["circle" + cu.GRAM]))

    assert gram_trace(0, 0.0) < gram_trace(1, 1.0) < gram_trace(1, 0.0)


def test_relocation_variants_join_the_relocation_pool(tiny_base):
    """`relocation_variants` adds that many prompts of the method-half words' variants to the relocation rounds'
    pool (unlearning/data.py `relocation_pool`), beside the method's RELOCATION_POOL broad prompts."""
    from unlearning.data import relocation_pool

    pipe = load_model(tiny_base)
    rounds = {**PLAIN_CLOSED_FORM, "relocation_rounds": 1}
    plain = relocation_pool(pipe, cu, UnlearnConfig(concept="circle", hyper=rounds))
    more = relocation_pool(pipe, cu, UnlearnConfig(concept="circle", hyper={**rounds, "relocation_variants": 7}))
    assert len(more) > len(plain) and len(more) <= len(plain) + 7
    torch.testing.assert_close(more[: len(plain)], plain)  # the broad prompts first, as before
    assert relocation_pool(pipe, cu, UnlearnConfig(concept="circle", hyper=PLAIN_CLOSED_FORM)) is None  # no rounds
