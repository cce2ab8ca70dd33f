"""The ``scratchllm align`` configs, one per command: DPOConfig, RewardConfig, PPOConfig, GRPOConfig,
RLOOConfig (each an AlignConfig: models, data, rollout and the training sections of ``scratchllm
train`` that the one Trainer reads, plus its own method's section) and ConstitutionalConfig. A command
reads only its own section, so ``align dpo`` refuses a ``[ppo]`` table instead of ignoring it.
Presets: configs/align/{dpo,reward,ppo,grpo,rloo,constitutional}.toml.

    out_dir = "runs/align/dpo"
    [models]          policy (the SFT model directory), reference (default: the policy), tokenizer, reward_model
    [data]            source = "checkable" (embedded instruction tasks) | "jsonl" (prompt/chosen/rejected)
    [dpo]             beta, loss_type (sigmoid | robust | ipo), label_smoothing
    [reward]          centering coefficient of the reward model
    [rollout]         reward source, prompts per rollout, sampling (PPO, GRPO, RLOO; DPO's negatives, evaluation)
    [ppo]             PPO: value model, minibatches, epochs, KL coefficient/target, GAE, clipping
    [grpo]            GRPO: group size, KL coefficient, clipping
    [rloo]            RLOO: group size, KL coefficient, clipping
    [lora]            LoRA adapters for PPO (ppo.lora = true)
    [constitutional]  constitution file, backend (our model in-process, or an OpenAI-compatible URL), rounds
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scratchllm.align.dpo import check_dpo_settings
from scratchllm.errors import ScratchError
from scratchllm.finetune.lora import LoraConfig
from scratchllm.tasks.instruct import KINDS
from scratchllm.train.config import TrainingConfig


@dataclass
class ModelsSection:
    policy: Path = Path("runs/finetune/model")  # the model to align (usually the SFT model): a model directory
    reference: Path | None = None  # frozen reference for DPO / the KL penalty; None: the policy's starting weights
    tokenizer: Path = Path("runs/tokenizer")
    reward_model: Path | None = None  # a directory written by `scratchllm align reward` (rollout.reward = "model")
    value_model: Path | None = None  # PPO's separate critic starts from this reward model directory
    # (None: from models.reward_model if set, else from the policy's body with a fresh value head)


@dataclass
class DataSection:
    source: Literal["checkable", "jsonl"] = "checkable"
    path: Path | None = None  # jsonl: training pairs
    heldout_path: Path | None = None  # jsonl: held-out pairs; None: heldout_fraction of `path`
    heldout_fraction: float = 0.1
    kinds: list[str] = field(default_factory=lambda: ["add", "sub", "reverse", "length"])  # checkable tasks
    n_train: int = 512  # checkable: training examples (prompts)
    n_heldout: int = 128  # checkable: held-out examples (disjoint prompts)
    system_prompt: bool = False  # checkable: include the system message in prompts
    policy_negatives: bool = True  # checkable: the policy's own wrong answers become the rejected replies

    def validate(self) -> None:
        if self.source == "jsonl" and self.path is None:
            raise ScratchError("data.source = \"jsonl\" needs data.path", "set data.path=pairs.jsonl")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ScratchError(f"data.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.n_train < 1 or self.n_heldout < 1:
            raise ScratchError("data.n_train and data.n_heldout must be >= 1")

        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ScratchError(f"data.kinds: unknown or empty ({bad[0] if bad else '[]'})",
                               f"choose from {', '.join(KINDS)}")


@dataclass
class DPOSection:
    beta: float = 0.1  # strength of the implicit KL to the reference (higher: stay closer)
    loss_type: Literal["sigmoid", "robust", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0  # assumed fraction of flipped labels (sigmoid: cDPO, robust: rDPO)
    sft_coef: float = 0.0  # + coef * NLL of the chosen replies (RPO): keeps their likelihood up

    def validate(self) -> None:
        check_dpo_settings(self.beta, self.loss_type, self.label_smoothing)
        if self.sft_coef < 0:
            raise ScratchError(f"dpo.sft_coef must be >= 0, got {self.sft_coef}")


@dataclass
class RewardSection:
    center_coef: float = 0.01  # coef * mean(r^2): keeps the free reward offset near 0

    def validate(self) -> None:
        if self.center_coef < 0:
            raise ScratchError(f"reward.center_coef must be >= 0, got {self.center_coef}")


@dataclass
class RolloutSection:
    """Sampling replies from the policy: shared by PPO, GRPO and RLOO (and DPO's negatives and evaluation)."""

    reward: Literal["checkable", "model"] = "checkable"  # programmatic correctness, or models.reward_model
    prompts_per_step: int = 4  # prompts per rollout (PPO: one reply each; GRPO/RLOO: group_size replies each)
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    eval_max_new_tokens: int = 16

    def validate(self) -> None:
        if self.prompts_per_step < 1 or self.max_new_tokens < 1 or self.eval_max_new_tokens < 1:
            raise ScratchError("rollout.prompts_per_step, rollout.max_new_tokens and rollout.eval_max_new_tokens "
                               "must be >= 1", "e.g. rollout.prompts_per_step=8 rollout.max_new_tokens=16")
        if self.temperature <= 0:
            raise ScratchError(f"rollout.temperature must be > 0, got {self.temperature}",
                               "rollouts must sample (temperature 0 gives identical completions)")


@dataclass
class PPOSection:
    """PPO with a learned value function (InstructGPT; Huang et al., "The N Implementation Details of RLHF
    with PPO")."""

    value_model: Literal["separate", "shared"] = "separate"  # separate critic, or a value head on the policy
    minibatch_size: int = 4  # replies per optimizer step; a rollout of rollout.prompts_per_step replies
    epochs: int = 4  # passes over each rollout batch (each pass: shuffled minibatches)
    kl_coef: float = 0.05  # beta in the per-token reward -beta * (log pi - log pi_ref)
    target_kl: float = 0.0  # > 0: adapt kl_coef so KL(policy || ref) per reply tracks this (Ziegler et al.)
    kl_horizon: int = 10000  # adaptive controller horizon (replies)
    gamma: float = 1.0
    lam: float = 0.95  # GAE lambda
    clip_eps: float = 0.2  # policy ratio clipping
    clip_value: float = 0.2  # value prediction clipping around the rollout's values
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    whiten_rewards: bool = False  # scale per-token rewards by their std over the rollout (no mean shift)
    unfinished_penalty: float = 1.0  # subtracted from the score of a reply that never closed with <|end|>
    stop_kl: float = 0.0  # > 0: skip the rest of a rollout's minibatches once approx KL(old || new) exceeds it
    max_kl: float = 50.0  # a rollout whose mean KL to the reference per reply exceeds this stops the run
    lora: bool = False  # train LoRA adapters ([lora] section) on the policy instead of all its weights

    def validate(self) -> None:
        if self.minibatch_size < 1 or self.epochs < 1:
            raise ScratchError("ppo.minibatch_size and ppo.epochs must be >= 1",
                               "e.g. ppo.minibatch_size=8 ppo.epochs=2")
        if self.kl_coef < 0 or self.target_kl < 0 or self.vf_coef < 0 or self.entropy_coef < 0:
            raise ScratchError("ppo.kl_coef, ppo.target_kl, ppo.vf_coef and ppo.entropy_coef must be >= 0",
                               "e.g. ppo.kl_coef=0.05 ppo.vf_coef=0.1 (0 disables a term)")
        if not 0 < self.clip_eps < 1 or self.clip_value <= 0:
            raise ScratchError("ppo.clip_eps must be in (0, 1) and ppo.clip_value > 0",
                               "the usual value of both is 0.2")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ScratchError(f"ppo.gamma and ppo.lam must be in [0, 1], got {self.gamma}, {self.lam}",
                               "RLHF uses ppo.gamma=1.0 ppo.lam=0.95")
        if self.kl_horizon < 1 or self.max_kl <= 0 or self.stop_kl < 0:
            raise ScratchError("ppo.kl_horizon must be >= 1, ppo.max_kl > 0 and ppo.stop_kl >= 0",
                               "e.g. ppo.kl_horizon=10000 ppo.max_kl=50 ppo.stop_kl=0 (off)")


@dataclass
class GRPOSection:
    """GRPO (Shao et al., 2024): PPO's clipped objective with group-relative advantages, no value model."""

    group_size: int = 8  # completions sampled per prompt; advantages are relative within the group
    kl_coef: float = 0.05  # beta * KL(policy || reference), k3 estimator per token
    clip_eps: float = 0.2  # PPO clipping of the probability ratio (matters for epochs_per_rollout > 1)
    epochs_per_rollout: int = 1  # optimizer steps on each batch of rollouts
    scale_rewards: bool = True  # divide advantages by the group's reward std (GRPO); false: Dr. GRPO

    def validate(self) -> None:
        if self.group_size < 2:
            raise ScratchError(f"grpo.group_size must be >= 2, got {self.group_size}",
                               "GRPO compares completions within a group; use 4-16")
        if self.epochs_per_rollout < 1:
            raise ScratchError("grpo.epochs_per_rollout must be >= 1", "1 reuses nothing; 2-4 reuse each rollout")
        if self.kl_coef < 0 or not 0 < self.clip_eps < 1:
            raise ScratchError("grpo.kl_coef must be >= 0 and grpo.clip_eps in (0, 1)",
                               "e.g. grpo.kl_coef=0.05 grpo.clip_eps=0.2")


@dataclass
class RLOOSection:
    """RLOO (Ahmadian et al., 2024): REINFORCE with the leave-one-out mean of the other replies as baseline."""

    group_size: int = 4  # replies per prompt (k); the baseline of each is the mean reward of the other k-1
    kl_coef: float = 0.05  # reward -= kl_coef * sum over the reply of (log pi_old - log pi_ref), as trl
    clip_eps: float = 0.2  # clipping of the sequence probability ratio (matters for epochs_per_rollout > 1)
    epochs_per_rollout: int = 1
    normalize_advantages: bool = False  # whiten the advantages over the batch (trl's normalize_advantages)

    def validate(self) -> None:
        if self.group_size < 2:
            raise ScratchError(f"rloo.group_size must be >= 2, got {self.group_size}",
                               "the leave-one-out baseline needs at least one other reply per prompt")
        if self.epochs_per_rollout < 1:
            raise ScratchError("rloo.epochs_per_rollout must be >= 1", "1 reuses nothing; 2-4 reuse each rollout")
        if self.kl_coef < 0 or not 0 < self.clip_eps < 1:
            raise ScratchError("rloo.kl_coef must be >= 0 and rloo.clip_eps in (0, 1)",
                               "e.g. rloo.kl_coef=0.05 rloo.clip_eps=0.2")


@dataclass
class ConstitutionalSection:
    constitution: Path = Path("configs/align/constitution.toml")
    backend: Literal["local", "openai"] = "local"  # local: models.policy in-process; openai: base_url
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"  # the model name sent to the endpoint
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (unset: no key)
    prompts: Path | None = None  # JSONL of {"prompt": ...} (or chat files' user turns); None: built-in prompts
    n_prompts: int = 16
    rounds: int = 1  # critique -> revise rounds per prompt (each applies one principle)
    max_new_tokens: int = 64
    temperature: float = 0.7
    out: Path | None = None  # the preference pairs file (chosen = revision); None: out_dir/pairs.jsonl

    def validate(self) -> None:
        if self.rounds < 1 or self.n_prompts < 1 or self.max_new_tokens < 1:
            raise ScratchError("constitutional.rounds, n_prompts and max_new_tokens must be >= 1")


@dataclass
class AlignConfig(TrainingConfig):
    """What every training alignment command reads; each command's config adds its method's section."""

    out_dir: Path = Path("runs/align")
    models: ModelsSection = field(default_factory=ModelsSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)


@dataclass
class DPOConfig(AlignConfig):
    dpo: DPOSection = field(default_factory=DPOSection)


@dataclass
class RewardConfig(AlignConfig):
    reward: RewardSection = field(default_factory=RewardSection)


@dataclass
class PPOConfig(AlignConfig):
    ppo: PPOSection = field(default_factory=PPOSection)
    lora: LoraConfig = field(default_factory=LoraConfig)  # ppo.lora = true


@dataclass
class GRPOConfig(AlignConfig):
    grpo: GRPOSection = field(default_factory=GRPOSection)


@dataclass
class RLOOConfig(AlignConfig):
    rloo: RLOOSection = field(default_factory=RLOOSection)


@dataclass
class ConstitutionalConfig:
    """``align constitutional`` trains nothing: the model that answers (or an endpoint) and the pairs file."""

    out_dir: Path = Path("runs/align/constitutional")
    seed: int = 1337
    models: ModelsSection = field(default_factory=ModelsSection)
    constitutional: ConstitutionalSection = field(default_factory=ConstitutionalSection)


# The config each `scratchllm align <command>` loads.
COMMAND_CONFIGS: dict[str, type] = {"dpo": DPOConfig, "reward": RewardConfig, "ppo": PPOConfig, "grpo": GRPOConfig,
                                    "rloo": RLOOConfig, "constitutional": ConstitutionalConfig}
