"""What aligning cost and bought, measured on held-out prompts: the comparison of DPO, PPO, GRPO and RLOO.

``drift(policy, reference, ...)``:

* ``kl``: KL(policy || reference) per reply, estimated on replies the policy samples (temperature 1) to
  the held-out prompts: mean over replies of sum_t (log pi(t) - log pi_ref(t));
* ``heldout_ppl``: perplexity of the policy on the held-out reference replies (the assistant's tokens and
  its closing ``<|end|>`` given the prompt: what SFT fitted), how much of that fit aligning kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from scratchllm.align.data import pad_sequences
from scratchllm.align.dpo import token_logps
from scratchllm.align.grpo import prompt_ids, respond
from scratchllm.tokenizer.chat import encode_chat


@torch.no_grad()
def drift(policy: nn.Module, reference: nn.Module, tokenizer: Any, examples: Sequence[Any], max_new_tokens: int = 16,
          seed: int = 0, batch_size: int = 64) -> dict[str, float]:
    was = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    kls, nll, n_tokens = [], 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = list(examples[i : i + batch_size])
        prompts = prompt_ids(tokenizer, [e.prompt for e in chunk])
        replies = respond(policy, tokenizer, prompts, max_new_tokens, temperature=1.0, seed=seed + i)
        batch = pad_sequences(prompts, replies, tokenizer.pad_id)
        ids, mask = batch["input_ids"].to(device), batch["completion_mask"][:, 1:].float().to(device)
        kls.append(((token_logps(policy, ids) - token_logps(reference, ids)) * mask).sum(-1).cpu())
        for e in chunk:  # the whole conversation: prompt + reference reply
            messages = getattr(e, "messages", None) or [*e.prompt, {"role": "assistant", "content": e.answer}]
            conv, loss_mask = encode_chat(tokenizer, messages)
            ids = torch.tensor([conv[: policy.cfg.context_length]], device=device)
            target = torch.tensor([loss_mask[1 : ids.shape[1]]], device=device, dtype=torch.float)
            nll -= float((token_logps(policy, ids) * target).sum())
            n_tokens += int(target.sum())
    policy.train(was)
    return {"kl": float(torch.cat(kls).mean()), "heldout_ppl": math.exp(nll / max(n_tokens, 1))}
