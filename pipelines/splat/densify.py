"""Adaptive density control for 3DGS (METHODS.md 2.A.1) on gsplat's `DefaultStrategy`.

gsplat's `DefaultStrategy` (Apache-2.0, a dependency) accumulates the screen-space gradient of
each Gaussian's 2D mean and provides the `duplicate` / `split` / `remove` / `reset_opa`
operations that update each parameter *and* its Adam state; our kernels' `meta` carries the keys
it reads. `CappedStrategy` keeps all of that and changes three things:

- growth respects `max_gaussians`: when the candidates would exceed the cap, only those with the
  largest accumulated gradients grow (clone small ones, split large ones, as the paper);
- the opacity reset fires every `reset_every` steps while densifying (gsplat 1.5.3's
  `step % reset_every == 0 & step > 0` is always false, so its reset never runs);
- world-size pruning (`prune_scale3d` x scene extent) starts after `prune_big_after` steps rather
  than after the first reset, so short runs get it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import duplicate, remove, reset_opa, split


@dataclass
class CappedStrategy(DefaultStrategy):
    """DefaultStrategy with a Gaussian budget, a working opacity reset and early size pruning.

    Attributes (beyond DefaultStrategy's):
        max_gaussians: upper bound on the number of Gaussians after growth.
        prune_big_after: step after which Gaussians larger than prune_scale3d x extent are pruned.
    """

    max_gaussians: int = 1_000_000
    prune_big_after: int = 0

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        """Update gradient statistics; grow, prune and reset on schedule (step counts from 1).

        As the paper's training loop: everything happens only while `step < refine_stop_iter`
        (`if iteration < opt.densify_until_iter`).
        """
        if step >= self.refine_stop_iter:
            return
        self._update_state(params, state, info, packed=packed)
        if step > self.refine_start_iter and step % self.refine_every == 0:
            self._grow_gs(params, optimizers, state, step)
            self._prune_gs(params, optimizers, state, step)
            state["grad2d"].zero_()
            state["count"].zero_()
        if self.reset_every > 0 and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    @torch.no_grad()
    def _grow_gs(self, params, optimizers, state, step):
        grads = state["grad2d"] / state["count"].clamp_min(1)
        n = len(grads)
        candidates = grads > self.grow_grad2d
        is_small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        budget = max(self.max_gaussians - n, 0)
        if int(candidates.sum()) > budget:
            # Keep the strongest gradients; each candidate adds exactly one Gaussian.
            keep = torch.zeros_like(candidates)
            if budget > 0:
                top = torch.topk(torch.where(candidates, grads, torch.full_like(grads, -1.0)), budget).indices
                keep[top] = True
            candidates = keep
        is_dupli = candidates & is_small
        is_split = candidates & ~is_small
        n_dupli = int(is_dupli.sum())
        if n_dupli > 0:
            duplicate(params=params, optimizers=optimizers, state=state, mask=is_dupli)
        is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=grads.device)])
        n_split = int(is_split.sum())
        if n_split > 0:
            split(params=params, optimizers=optimizers, state=state, mask=is_split,
                  revised_opacity=self.revised_opacity)
        return n_dupli, n_split

    @torch.no_grad()
    def _prune_gs(self, params, optimizers, state, step):
        is_prune = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa
        if step > self.prune_big_after:
            is_prune |= torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * state["scene_scale"]
        # Never prune everything: an empty model cannot recover.
        if bool(is_prune.all()):
            return 0
        n_prune = int(is_prune.sum())
        if n_prune > 0:
            remove(params=params, optimizers=optimizers, state=state, mask=is_prune)
        return n_prune
