"""The ``scratchllm align`` config: models, preference data, one section per method, and the training
sections of ``scratchllm train`` (optim, schedule, train, eval, checkpoint, log), which the one
Trainer reads. Presets: configs/align/{dpo,reward,ppo,constitutional}.toml.

    out_dir = "runs/align/dpo"
    [models]          policy (the SFT model directory), reference (default: the policy), tokenizer, reward_model
    [data]            source = "checkable" (embedded instruction tasks) | "jsonl" (prompt/chosen/rejected)
    [dpo]             beta, loss_type (sigmoid | robust | ipo), label_smoothing
    [reward]          centering coefficient of the reward model
    [ppo]             GRPO: group size, prompts per step, sampling, KL coefficient, clipping, reward source
    [constitutional]  constitution file, backend (our model in-process, or an OpenAI-compatible URL), rounds
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scratchllm.errors import ScratchError
from scratchllm.train.config import CheckpointSection, EvalSection, LogSection, OptimConfig, ScheduleConfig, TrainSection


@dataclass
class ModelsSection:
    policy: Path = Path("runs/finetune/model")  # the model to align (usually the SFT model): a model directory
    reference: Path | None = None  # frozen reference for DPO / the KL penalty; None: the policy's starting weights
    tokenizer: Path = Path("runs/tokenizer")
    reward_model: Path | None = None  # a directory written by `scratchllm align reward` (ppo.reward = "model")


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
        from scratchllm.finetune.instruct_data import KINDS

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
        from scratchllm.align.dpo import check_dpo_settings

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
class PPOSection:
    """GRPO (Shao et al., 2024): PPO's clipped objective with group-relative advantages, no value model."""

    reward: Literal["checkable", "model"] = "checkable"  # programmatic correctness, or models.reward_model
    group_size: int = 8  # completions sampled per prompt; advantages are relative within the group
    prompts_per_step: int = 4  # prompts per micro-batch (train.batch_size is pairs per micro-batch for dpo/reward)
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    kl_coef: float = 0.05  # beta * KL(policy || reference), k3 estimator per token
    clip_eps: float = 0.2  # PPO clipping of the probability ratio (matters for epochs_per_rollout > 1)
    epochs_per_rollout: int = 1  # optimizer steps on each batch of rollouts
    scale_rewards: bool = True  # divide advantages by the group's reward std (GRPO); false: Dr. GRPO
    eval_max_new_tokens: int = 16

    def validate(self) -> None:
        if self.group_size < 2:
            raise ScratchError(f"ppo.group_size must be >= 2, got {self.group_size}",
                               "GRPO compares completions within a group; use 4-16")
        if self.prompts_per_step < 1 or self.max_new_tokens < 1 or self.epochs_per_rollout < 1:
            raise ScratchError("ppo.prompts_per_step, ppo.max_new_tokens and ppo.epochs_per_rollout must be >= 1")
        if self.temperature <= 0:
            raise ScratchError(f"ppo.temperature must be > 0, got {self.temperature}",
                               "rollouts must sample (temperature 0 gives identical completions)")
        if self.kl_coef < 0 or not 0 < self.clip_eps < 1:
            raise ScratchError("ppo.kl_coef must be >= 0 and ppo.clip_eps in (0, 1)")


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
    out: Path = Path("runs/align/constitutional/pairs.jsonl")  # preference pairs (chosen = revision)

    def validate(self) -> None:
        if self.rounds < 1 or self.n_prompts < 1 or self.max_new_tokens < 1:
            raise ScratchError("constitutional.rounds, n_prompts and max_new_tokens must be >= 1")


@dataclass
class AlignConfig:
    out_dir: Path = Path("runs/align")
    seed: int = 1337
    models: ModelsSection = field(default_factory=ModelsSection)
    data: DataSection = field(default_factory=DataSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    reward: RewardSection = field(default_factory=RewardSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    constitutional: ConstitutionalSection = field(default_factory=ConstitutionalSection)
    # The training sections of `scratchllm train`, with its defaults; the presets set alignment values
    # (a small constant lr, no sample generations).
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
