"""Training the last stages of a model on cached trunk outputs, for `vsearch tune`.

`tune` decides what is trained on and caches the frozen trunk's outputs; this module is the loop
that runs on them: batches of a few views per product, the supervised contrastive loss, validation
on the held-out photos (product R@1 and MRR, the score that decides), early stopping, and
checkpoints in the work folder that a killed tune resumes from. Kept apart so the training can be
read without the job around it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsearch.embeddings.tuned_model import Parts, save_weights

__all__ = ["Trained", "read_json", "supcon_loss", "train", "write_json"]

TEMPERATURE = 0.05
LEARNING_RATE = 1e-4


@dataclass
class Trained:
    """What training ended with, for `tune` to keep or not."""

    best: dict[str, Any]  # state dict of the best validation
    base: dict[str, float]
    tuned: dict[str, float]
    steps: int
    stopped: str
    history: list[dict[str, float]]


def train(
    work: Path,
    acts: np.ndarray,
    parts: Parts,
    plan: dict[str, Any],
    items: list[list],
    cached: list[int],
    views: int,
    *,
    max_steps: int,
    validate_every: int,
    patience: int,
    batch_products: int,
    seed: int,
    deadline: float | None,
    progress: Callable[[str, int, int], None],
) -> Trained:
    """Train ``parts``' head on the cached rows of ``acts`` from the last checkpoint in ``work``,
    validating every ``validate_every`` steps; ends with the best weights loaded into ``parts``."""
    import torch

    per = 1 + views
    labels = np.asarray(plan["labels"])
    pos = {i: k for k, i in enumerate(cached)}
    by_label: dict[int, list[int]] = {}
    for i in plan["train"]:
        by_label.setdefault(int(labels[i]), []).append(pos[i])
    # half of each batch from products with two photos or more (real different views to pull
    # together), the rest single-photo products and distractors (two augmented copies each)
    multi = sorted(lab for lab, own in by_label.items() if len(own) >= 2)
    single = sorted(lab for lab, own in by_label.items() if len(own) < 2)
    n_multi = min(len(multi), max(batch_products // 2, batch_products - len(single)))
    n_single = min(len(single), batch_products - n_multi)
    params = parts.parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE)
    ckpt = _load_checkpoint(work, parts, opt)
    if ckpt is None:
        base = _validate(acts, parts, plan, items, cached, views)
        ckpt = {
            "step": 0,
            "base": base,
            "best_score": base["score"],
            "best_step": 0,
            "history": [],
            "bad": 0,
            "best": parts.state(),
        }
        _save_checkpoint(work, parts, opt, ckpt)
    best = ckpt["best"]
    step, stopped = ckpt["step"], "max-steps"
    progress("train", step, max_steps)
    while step < max_steps:
        if deadline is not None and time.monotonic() > deadline:
            stopped = "budget"
            break
        rng = np.random.default_rng([seed, step])
        rows, ys = [], []
        chosen = rng.choice(multi, size=n_multi, replace=False).tolist() if n_multi else []
        if n_single:
            chosen += rng.choice(single, size=n_single, replace=False).tolist()
        for lab in chosen:
            own = by_label[lab]
            n = 4 if len(own) >= 2 else 2
            ks = [own[j % len(own)] for j in rng.permutation(max(n, len(own)))[:n]]
            vs = rng.permutation(per)[:n] if len(own) == 1 else rng.integers(0, per, size=n)
            rows += [k * per + int(v) for k, v in zip(ks, vs)]
            ys += [lab] * n
        x = torch.from_numpy(acts[np.asarray(rows)].astype(np.float32))
        loss = supcon_loss(parts.head(x), torch.as_tensor(ys), TEMPERATURE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        progress("train", step, max_steps)
        if step % validate_every == 0 or step == max_steps:
            val = _validate(acts, parts, plan, items, cached, views)
            ckpt["history"].append({"step": step, "loss": loss.item(), **val})
            if val["score"] > ckpt["best_score"]:
                best = parts.state()
                ckpt.update(best_score=val["score"], best_step=step, bad=0)
            else:
                ckpt["bad"] += 1
            ckpt.update(step=step, best=best)
            _save_checkpoint(work, parts, opt, ckpt)
            if ckpt["bad"] >= patience:
                stopped = "early-stop"
                break
    parts.load(best)
    tuned = next((h for h in ckpt["history"] if h["step"] == ckpt["best_step"]), ckpt["base"])
    return Trained(
        best, ckpt["base"], {k: tuned[k] for k in ckpt["base"]}, step, stopped, ckpt["history"]
    )


def supcon_loss(z: Any, y: Any, temperature: float) -> Any:
    """Supervised contrastive loss (Khosla et al. 2020): every other view of the same label is a
    positive, every other sample in the batch a negative."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(z.float(), dim=-1)
    sim = z @ z.T / temperature
    self_mask = torch.eye(len(y), dtype=torch.bool)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask
    has = pos.any(dim=1)
    mean_pos = log_prob.masked_fill(~pos, 0).sum(dim=1)[has] / pos.sum(dim=1)[has]
    return -mean_pos.mean()


def _validate(
    acts: np.ndarray,
    parts: Parts,
    plan: dict[str, Any],
    items: list[list],
    cached: list[int],
    views: int,
) -> dict[str, float]:
    """Product R@1 and MRR of the held-out photos (and of their augmented copies, phone-like)
    against the other catalog photos, with the current weights; ``score`` (what decides) is the mean
    MRR."""
    import torch

    per = 1 + views
    labels = np.asarray(plan["labels"])
    pos = {i: k for k, i in enumerate(cached)}
    gallery = [i for i in plan["train"] if not items[i][3]]

    def embed(rows: list[int]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(rows), 256):
                x = torch.from_numpy(acts[np.asarray(rows[s : s + 256])].astype(np.float32))
                out.append(torch.nn.functional.normalize(parts.head(x).float(), dim=-1).numpy())
        return np.concatenate(out)

    order = np.argsort(labels[gallery], kind="stable")
    gallery = [gallery[j] for j in order]
    g_labels = labels[gallery]
    starts = np.flatnonzero(np.r_[True, g_labels[1:] != g_labels[:-1]])
    g = embed([pos[i] * per for i in gallery])
    q = embed([pos[i] * per + v for i in plan["val"] for v in range(per)])
    # [queries, products]: a product's best photo
    best = np.maximum.reduceat(q @ g.T, starts, axis=1)
    col = np.searchsorted(g_labels[starts], np.repeat(labels[plan["val"]], per))
    own = best[np.arange(len(q)), col]
    rank = (1 + (best > own[:, None]).sum(axis=1)).reshape(-1, per)
    clean, aug = rank[:, 0], rank[:, 1:]
    out = {
        "held_out_r1": float((clean == 1).mean()),
        "augmented_r1": float((aug == 1).mean()),
        "held_out_mrr": float((1 / clean).mean()),
        "augmented_mrr": float((1 / aug).mean()),
    }
    # finer than R@1 on a few held-out photos
    out["score"] = (out["held_out_mrr"] + out["augmented_mrr"]) / 2
    return {k: round(v, 4) for k, v in out.items()}


def _save_checkpoint(work: Path, parts: Parts, opt: Any, ckpt: dict[str, Any]) -> None:
    """Trained weights, best weights and AdamW moments as safetensors; counters as JSON."""
    tensors = {f"cur.{k}": v for k, v in parts.state().items()}
    tensors.update({f"best.{k}": v for k, v in ckpt["best"].items()})
    steps = []
    for n, p in enumerate(opt.param_groups[0]["params"]):
        st = opt.state.get(p, {})
        if "exp_avg" in st:
            tensors[f"opt.{n}.exp_avg"] = st["exp_avg"].detach().clone()
            tensors[f"opt.{n}.exp_avg_sq"] = st["exp_avg_sq"].detach().clone()
            steps.append(float(st["step"]))
        else:
            steps.append(0.0)
    save_weights(work / "checkpoint.safetensors", tensors, {"kind": "vsearch-tune-checkpoint"})
    write_json(
        work / "checkpoint.json",
        {**{k: v for k, v in ckpt.items() if k != "best"}, "opt_steps": steps},
    )


def _load_checkpoint(work: Path, parts: Parts, opt: Any) -> dict[str, Any] | None:
    import torch

    meta = read_json(work / "checkpoint.json")
    if not meta or not (work / "checkpoint.safetensors").is_file():
        return None
    from safetensors.torch import load_file

    tensors = load_file(str(work / "checkpoint.safetensors"))
    parts.load({k[4:]: v for k, v in tensors.items() if k.startswith("cur.")})
    for n, p in enumerate(opt.param_groups[0]["params"]):
        if f"opt.{n}.exp_avg" in tensors:
            opt.state[p] = {
                "step": torch.tensor(meta["opt_steps"][n]),
                "exp_avg": tensors[f"opt.{n}.exp_avg"],
                "exp_avg_sq": tensors[f"opt.{n}.exp_avg_sq"],
            }
    meta["best"] = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    meta["resumed_at"] = meta["step"]
    return meta


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of the work folder (plan, cache progress, checkpoint counters); {} if absent or
    torn."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace a JSON file of the work folder atomically, so a kill never leaves half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
