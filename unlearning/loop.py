"""The one training loop of an unlearning step: setup, prepare data, train, save. Read top to bottom.

It starts from the parent model (the current production version), trains one parameter set with one
method's loss (or, for a closed-form method such as UCE, edits it once), and writes the result as a
delta from the *base* model (unlearning/delta.py). bf16 autocast on CUDA, fp32 on CPU; optional
`torch.compile`; gradient clipping; a progress bar with the loss terms; a checkpoint every N steps
with everything needed to resume. Every random draw of step k comes from a generator seeded with
(seed, k), so a killed run started again ends with exactly the weights of an uninterrupted one.

Its parts live beside it: the config (unlearning/config.py), the data and embeddings (unlearning/data.py),
the folder it writes (unlearning/model_folder.py).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from tqdm.auto import tqdm

from unlearning import domain
from unlearning.attention import record_cross_attention
from unlearning.conditioning import (
    MMDIT,
    architecture,
    conditioned,
    encode,
    mmdit_parameter_set,
    prediction_target,
    segment_lengths,
    text_encoders,
    word_tokens,
)
from unlearning.config import ConfigError, UnlearnConfig
from unlearning.data import broad_gram, encode_pairs, prepare_data, relocation_inputs
from unlearning.delta import apply_deltas, compute_delta, denoiser, denoiser_component, load_delta, save_delta
from unlearning.files import save_torch, sha256_file, write_json
from unlearning.methods import get_method
from unlearning.methods.context import EditContext, StepContext
from unlearning.model_folder import (
    CHECKPOINT_FILE,
    DELTA_FILE,
    LINEAGE_FILE,
    SUMMARY_FILE,
    load_lineage,
    save_lineage,
)
from unlearning.parameters import (
    add_lora,
    freeze_all_but,
    lora_merged_weights,
    merge_lora,
    trainable_names,
)
from unlearning.prompts import RequestPrompts, broad_prompts, with_prefixes, with_variants
from unlearning.surgery import surgery_backward

# The config and the folder's layout live in their own modules; these names stay importable from here.
__all__ = [
    "CHECKPOINT_FILE",
    "DELTA_FILE",
    "LINEAGE_FILE",
    "SUMMARY_FILE",
    "ConfigError",
    "UnlearnConfig",
    "finished_summary",
    "load_lineage",
    "prepare_data",
    "run_unlearning",
]


def _step_generator(seed: int, step: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


# Checkpoints go through this one name (a kill right after one is what the resume tests simulate).
_save_checkpoint = save_torch


def finished_summary(out_dir: Path, cfg: UnlearnConfig) -> dict | None:
    """The summary of a step that already finished in `out_dir` under this very config (its delta
    present and unaltered), or None. A finished step is never trained again."""
    summary_path, delta_path = out_dir / SUMMARY_FILE, out_dir / DELTA_FILE
    if not (summary_path.is_file() and delta_path.is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        return None
    if summary.get("config") != cfg.record() or summary.get("delta_sha256") != sha256_file(delta_path):
        return None
    return summary


@torch.no_grad()
def _apply_finished(pipe, out_dir: Path, base_values: dict[str, torch.Tensor]) -> None:
    """Set the parent's denoiser to what the finished step trained: base + its delta on the tensors it covers."""
    delta, _ = load_delta(out_dir / DELTA_FILE)
    names = [key.split(".", 1)[1] for key in delta]
    component = denoiser_component(pipe)
    apply_deltas({component: denoiser(pipe)}, {component: {n: base_values[n] for n in names}}, [delta])


def run_unlearning(
    pipe,
    cfg: UnlearnConfig,
    out_dir: Path,
    *,
    prompts: RequestPrompts,
    model_sha: str,
    base_values: dict[str, torch.Tensor],
    cache_dir: Path | None = None,
    metadata: dict | None = None,
    progress: bool = True,
    lineage: dict[str, torch.Tensor] | None = None,
    base_sha: str | None = None,
    drawn_by_parent: Callable[[list[str]], np.ndarray] | None = None,
) -> dict:
    """Train one unlearning step on `pipe` (the parent; its denoiser is modified in place) and write
    `out_dir/delta.safetensors` (θ − θ_0 for the trained tensors) and `out_dir/summary.json`.

    A step that already finished in `out_dir` under the same config is not trained again: its delta is
    applied to `pipe` and its summary returned (`"reused": true`). One stopped part-way resumes from
    its last checkpoint.

    Args:
        prompts: the request's prompt sets, built by the lineage's world (unlearning/world.py).
        base_values: θ_0 — the *base* model's values of (at least) every denoiser tensor the set trains,
            keyed by state-dict name (of the UNet, or of an MMDiT's `transformer`).
        model_sha: the parent's identity, keying the cache of its generated latents.
        cache_dir: where the parent's latents (and, with `base_sha`, the broad Gram) are cached; None: nowhere.
        base_sha: the base's identity, keying the cache of the broad Gram (its text encoders encode it).
        drawn_by_parent: whether the parent's image of each prompt shows the request's concept (the world's
            judge; unlearning/mining.py `drawn_by`), for a closed form's `relocation_away_screen`.
        lineage: the parent version's lineage terms (`lineage.safetensors`), for a closed form that
            re-solves from the base; the new version's are written beside its delta.

    Raises:
        ConfigError: an invalid config, or a base whose architecture the method cannot edit (nothing written):
            on an MMDiT (SD3, FLUX) only a closed form with an MMDiT set runs (`mmdit_parameter_set`).
    """
    cfg.validate()
    arch = architecture(pipe, cfg.method)  # SD1.x/2.x, SDXL, or an MMDiT for a method that can edit one
    component = denoiser_component(pipe)  # `unet`, or an MMDiT's `transformer`
    # the set the step trains: an MMDiT's is the method's MMDIT_PARAMS (its text projections), whatever was asked
    params = mmdit_parameter_set(denoiser(pipe), cfg.method) if arch in MMDIT else cfg.params
    if (done := finished_summary(out_dir, cfg)) is not None:
        _apply_finished(pipe, out_dir, base_values)
        return {**done, "reused": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pipe.device
    method = get_method(cfg.method)
    started = time.perf_counter()

    # -- setup: student = the parent's UNet (an MMDiT's transformer), trained in place; a frozen copy is θ_p
    student = denoiser(pipe)
    closed_form = method.KIND == "edit"  # an edit from the prompts' embeddings: no images, no steps
    parent = None if closed_form else copy.deepcopy(student).requires_grad_(False).eval()
    names = trainable_names(student, params)  # the denoiser tensors the delta covers
    if cfg.params == "lora":  # low-rank adapters on attn2 train (and checkpoint); merged into `names` at save time
        trained = add_lora(student, rank=cfg.lora_rank, seed=cfg.seed)
    else:
        trained = dict(zip(names, freeze_all_but(student, names)))
    trained_params = list(trained.values())
    base = {n: base_values[n].to(device, torch.float32) for n in names}
    for encoder in text_encoders(pipe):
        encoder.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    # a loss method reads attn2 maps (a closed form reads none; an MMDiT has no attn2)
    student_maps, parent_maps = (
        (None, None) if closed_form else (record_cross_attention(student), record_cross_attention(parent))
    )
    optimizer = torch.optim.AdamW(trained_params, lr=cfg.lr, weight_decay=0.0)
    forward = torch.compile(student) if cfg.compile else student
    if (
        cfg.domain_correction
    ):  # DoCo (Wu et al. AAAI 2025): D tells the parent's anchor outputs from the student's target outputs
        domain_hyper = cfg.hyper  # resolved with domain.DEFAULTS (unlearning/config.py)
        discriminator = domain.make_discriminator(student.config.out_channels, seed=cfg.seed).to(device)
        discriminator_optimizer = domain.make_optimizer(discriminator, domain_hyper["domain_lr"])
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )

    # -- data: target/anchor pairs, preserve + replay prompts (each a Condition, as the architecture's UNet
    # reads it: unlearning/conditioning.py), the parent's images of them (latents)
    world_preserve = prompts.preserve
    # pairs whose word is a rule-made variant of the method's half (continual_uce.py `variant_prompts`), and
    # pairs in prefixed contexts (what a prepended-token attack varies): prompts.py `with_variants`, `with_prefixes`
    prompts = with_variants(prompts, int(cfg.hyper.get("variant_prompts", 0)), seed=cfg.seed)
    prompts = with_prefixes(prompts, pipe.tokenizer, cfg.prefixed_prompts, seed=cfg.seed)
    if cfg.broad_prompts and not closed_form:
        # broad prior preservation: the method's half of the vocabulary joins the preserve set, distilled
        # from the parent like it (what the closed form's broad Gram G holds, for a loss method: without
        # it the anchor floods the words no request named — bench/RESULTS.md, issue 24) — except the mined
        # prompts, which the parent draws the target for: they are erased instead (unlearning/mining.py)
        mined = set(prompts.mined)
        broad = [p for p in broad_prompts(pipe.tokenizer, cfg.broad_prompts, seed=cfg.seed) if p not in mined]
        prompts = replace(prompts, preserve=prompts.preserve + broad)
    targets_named = len(prompts.target)  # forget rows from here on are mined prompts
    if prompts.mined and not closed_form:
        # each mined prompt is a forget prompt without the target's words, towards "a <anchor>" (the forget
        # batch is noised from the parent's images of that; no tokens to match attention on) — or by the
        # method's negative guidance (duge_on_uce `mined_guidance`: the StepContext marks the mined rows)
        anchor_word = prompts.anchor_words[0] if prompts.anchor_words else ""
        count = len(prompts.mined)
        prompts = replace(
            prompts,
            target=prompts.target + list(prompts.mined),
            anchor=prompts.anchor + [f"a {anchor_word}" if anchor_word else ""] * count,
            target_words=prompts.target_words + [""] * count,
            anchor_words=prompts.anchor_words + [""] * count,
        )
    keep_prompts = prompts.preserve + prompts.replay
    if not closed_form:
        forget_latents, keep_latents = (
            x.to(device) for x in prepare_data(pipe, cfg, prompts, model_sha=model_sha, cache_dir=cache_dir)
        )
    target_embeds, anchor_embeds = encode(pipe, prompts.target), encode(pipe, prompts.anchor)
    keep_embeds, empty_embed = encode(pipe, keep_prompts), encode(pipe, [""])
    concept_embed = encode(pipe, [f"a {cfg.concept}"]) if prompts.mined else None  # the target named plainly
    target_tokens = word_tokens(pipe, prompts.target, prompts.target_words)
    anchor_tokens = word_tokens(pipe, prompts.anchor, prompts.anchor_words)
    if not closed_form:  # the noise schedule of a loss method's steps
        scheduler = pipe.scheduler
        alphas = scheduler.alphas_cumprod.to(device)
        prediction_type = scheduler.config.get("prediction_type", "epsilon")  # SD2.x: v_prediction
        train_steps = scheduler.config.num_train_timesteps

    # -- edit: a closed-form method edits once, instead of training; a loss method with a `START` closed
    # form trains from that edit (its K/V solved from the base first, then the steps; unlearning/methods)
    last: dict[str, float] = {}
    lineage_record = None
    edit_method = method if closed_form else (get_method(method.START) if hasattr(method, "START") else None)
    edited: set[str] = set()
    if edit_method is not None:
        edited = set(trainable_names(student, params if closed_form else edit_method.PARAMS))
        # the broad Gram's prompts: a closed form's `broad_prompts`; a start edit's own (the loss method's
        # `broad_prompts` are its preserve prompts)
        broad_gram_prompts = cfg.broad_prompts if closed_form else getattr(edit_method, "BROAD_PROMPTS", 0)
        broad = broad_prompts(pipe.tokenizer, broad_gram_prompts, seed=cfg.seed) if broad_gram_prompts else None
        # an MMDiT's pooled projection is edited from the prompts' pooled embeddings (SDXL's pooled: untouched)
        preserve_embeds, replay_embeds = encode(pipe, world_preserve), encode(pipe, prompts.replay)
        conditions = {
            "target": target_embeds,
            "anchor": anchor_embeds,
            "preserve": preserve_embeds,
            "replay": replay_embeds,
        }
        pooled = {f"{k}_pooled": c.pooled for k, c in conditions.items()} if arch in MMDIT else {}
        # the relocation rounds' pool; a screen of it judges the parent, so it runs before the edit changes it
        pool, pool_drawn = relocation_inputs(pipe, edit_method, cfg, drawn_by_parent)
        edit = EditContext(
            trained={n: p for n, p in trained.items() if n in edited},
            base_values={n: v for n, v in base.items() if n in edited},
            target_embeds=target_embeds.hidden,  # a closed form maps the tokens attn2 K/V see, no added condition
            anchor_embeds=anchor_embeds.hidden,
            target_tokens=target_tokens,
            anchor_tokens=anchor_tokens,
            preserve_embeds=preserve_embeds.hidden,
            replay_embeds=replay_embeds.hidden,
            hyper=cfg.hyper,
            concept=cfg.concept,
            anchor=prompts.anchor_words[0] if prompts.anchor_words else "",
            earlier=tuple(encode_pairs(pipe, pairs) for pairs in prompts.earlier),
            lineage=lineage,
            broad_gram=None if broad is None else broad_gram(pipe, broad, base_sha=base_sha, cache_dir=cache_dir),
            broad_pooled_gram=None
            if broad is None or arch not in MMDIT
            else broad_gram(pipe, broad, pooled=True, base_sha=base_sha, cache_dir=cache_dir),
            segments=segment_lengths(pipe),
            relocation_pool=pool,
            relocation_drawn=pool_drawn,
            **pooled,
        )
        last = {f"edit/{k}" if not closed_form else k: v for k, v in edit_method.edit(edit).items()}
        if edit.lineage_out is not None:
            concepts = sorted({key.rsplit("::", 1)[0] for key in edit.lineage_out})
            lineage_record = save_lineage(out_dir / LINEAGE_FILE, edit.lineage_out, concepts)
    # L2-SP's anchor: the base (θ_0), or — after a start edit — what the edit solved from the base, so the
    # regulariser keeps the steps near the closed form instead of undoing it
    anchor_values = base if closed_form else {**base, **{n: trained[n].detach().clone() for n in edited}}

    # -- resume
    checkpoint_path, start = out_dir / CHECKPOINT_FILE, 0
    config_record = cfg.record()
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=False)
        if state["config"] != config_record:
            raise ValueError(f"{checkpoint_path} belongs to a different configuration; use another --out")
        with torch.no_grad():
            for name, value in state["trained"].items():
                trained[name].copy_(value.to(device))
        optimizer.load_state_dict(state["optimizer"])
        if cfg.domain_correction:
            discriminator.load_state_dict(state["discriminator"])
            discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        start = state["step"]

    def noised(latents: torch.Tensor, generator: torch.Generator):
        index = torch.randint(0, latents.shape[0], (cfg.batch_size,), generator=generator)
        z0 = latents[index.to(device)]
        noise = torch.randn(z0.shape, generator=generator).to(device)
        t = torch.randint(0, train_steps, (cfg.batch_size,), generator=generator).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        target = prediction_target(prediction_type, a, z0, noise)  # what the UNet predicts: ε, or v for SD2.x
        return index.to(device), a.sqrt() * z0 + (1 - a).sqrt() * noise, noise, t, target

    # -- train (a closed form edited above: it has no steps)
    student.train()
    if not closed_form:
        bar = tqdm(
            range(start, cfg.steps),
            desc=f"unlearn {cfg.concept} ({cfg.method})",
            initial=start,
            total=cfg.steps,
            disable=not progress,
        )
        for step in bar:
            generator = _step_generator(cfg.seed, step)
            f_index, f_noisy, f_noise, f_t, f_target = noised(forget_latents, generator)
            p_index, p_noisy, p_noise, p_t, p_target = noised(keep_latents, generator)
            ctx = StepContext(
                student=conditioned(forward),  # called with a Condition: SDXL's added conditions go with it
                parent=conditioned(parent),
                student_maps=student_maps,
                parent_maps=parent_maps,
                forget_noisy=f_noisy,
                forget_noise=f_noise,
                forget_timesteps=f_t,
                target_embeds=target_embeds[f_index],
                anchor_embeds=anchor_embeds[f_index],
                empty_embeds=empty_embed.repeat(cfg.batch_size),
                target_tokens=target_tokens[f_index],
                anchor_tokens=anchor_tokens[f_index],
                preserve_noisy=p_noisy,
                preserve_noise=p_noise,
                preserve_timesteps=p_t,
                preserve_embeds=keep_embeds[p_index],
                forget_target=f_target,
                preserve_target=p_target,
                forget_mined=f_index >= targets_named if prompts.mined else None,
                concept_embeds=concept_embed.repeat(cfg.batch_size) if prompts.mined else None,
                # L2-SP anchors at the base: for lora, the merged weights W + B·A (what the delta will hold)
                trained=lora_merged_weights(student) if cfg.params == "lora" else trained,
                base_values=anchor_values,
                hyper=cfg.hyper,
            )
            with autocast:
                terms = method.loss(ctx)
                if cfg.domain_correction:  # the student's target outputs must pass for the parent's anchor outputs
                    fake, real = domain.outputs(ctx)
                    adversarial = domain.generator_loss(discriminator(fake))
                    terms["forget"] = terms["forget"] + domain_hyper["lambda_domain"] * adversarial
                    terms["log/adv"] = adversarial.detach()
            optimizer.zero_grad(set_to_none=True)
            if (cfg.gradient_surgery or getattr(method, "ALWAYS_SURGERY", False)) and "preserve" in terms:
                surgery_backward(terms, trained_params)
            else:
                sum(terms[k] for k in ("forget", "preserve", "regularise") if k in terms).backward()
            torch.nn.utils.clip_grad_norm_(trained_params, cfg.grad_clip)
            optimizer.step()
            if cfg.domain_correction:  # then D's own step, on the detached outputs
                terms["log/disc"] = domain.discriminator_step(discriminator, discriminator_optimizer, real, fake)
            last = {k.removeprefix("log/"): float(v) for k, v in terms.items() if k.startswith("log/")}
            bar.set_postfix({k: f"{v:.4f}" for k, v in last.items()})
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                _save_checkpoint(
                    checkpoint_path,
                    {
                        "trained": {n: p.detach().cpu().clone() for n, p in trained.items()},
                        "optimizer": optimizer.state_dict(),
                        "step": step + 1,
                        "rng_cpu": torch.get_rng_state(),
                        "config": config_record,
                        "discriminator": discriminator.state_dict() if cfg.domain_correction else None,
                        "discriminator_optimizer": discriminator_optimizer.state_dict()
                        if cfg.domain_correction
                        else None,
                    },
                )
    student.eval()
    student.requires_grad_(False)
    if student_maps is not None:
        student.set_attn_processor(AttnProcessor2_0())  # sampling after training needs no recorded maps

    if cfg.params == "lora":
        merge_lora(student)  # W ← W + B·A, adapters removed: pipe.unet is a plain UNet again

    # -- save: the delta from the base for the trained tensors, and a summary
    final = dict(student.named_parameters())
    delta = compute_delta({n: final[n].detach() for n in names}, {n: base[n] for n in names}, component)
    header = {
        "concept": cfg.concept,
        "method": cfg.method,
        "params": params,
        "steps": 0 if closed_form else cfg.steps,
        "parent_sha256": model_sha,
        **(metadata or {}),
    }
    save_delta(out_dir / DELTA_FILE, delta, header)
    summary = {
        "config": config_record,
        "delta": str(out_dir / DELTA_FILE),
        "delta_sha256": sha256_file(out_dir / DELTA_FILE),
        "params": params,  # the set trained: on an MMDiT its text projections, whatever the config's default
        "trained_tensors": len(names),
        "trained_parameters": sum(p.numel() for p in trained_params),
        "final_terms": last,
        "seconds": round(time.perf_counter() - started, 2),
        "resumed_from_step": start,
        "lineage": lineage_record,
        "prompts": {
            "target": prompts.target[:4],
            "anchor": prompts.anchor[:4],
            "pairs": targets_named,  # target/anchor pairs that name the target (prefixed ones included)
            "preserve": len(prompts.preserve),
            "replay": len(prompts.replay),
            "mined": list(prompts.mined),
        },
        **(metadata or {}),
    }
    write_json(out_dir / SUMMARY_FILE, summary)  # last: a summary means the step finished
    checkpoint_path.unlink(missing_ok=True)
    return summary
