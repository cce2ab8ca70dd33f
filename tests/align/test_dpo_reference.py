"""Our DPO loss, implicit rewards and log-probs against trl's DPOTrainer on the same batch.

trl computes its loss inside ``DPOTrainer._compute_loss`` (a trainer method), so we build a real
DPOTrainer around the same tiny model exported to Hugging Face Llama, let it tokenise and collate
the pairs, and feed that exact batch to our objective.
"""

from __future__ import annotations

import pytest
import torch

from scratchllm.align.dpo import DPOObjective, dpo_loss, sequence_logps

from .conftest import HFLogits

pytest.importorskip("trl")

PAIRS = [
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "five"},
    {"prompt": "Say hi:", "chosen": " hi there", "rejected": " no"},
    {"prompt": "Reverse the word: tiger", "chosen": "regit", "rejected": "tiger"},
]


@pytest.fixture(scope="module")
def trl_setup(tokenizer, make_model, tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from scratchllm.model.hf import export_hf

    policy, reference = make_model(seed=1), make_model(seed=2)
    d = tmp_path_factory.mktemp("hf")
    export_hf(policy, d / "policy", tokenizer)
    export_hf(reference, d / "reference", tokenizer)
    hf_policy = AutoModelForCausalLM.from_pretrained(d / "policy", dtype=torch.float32)
    hf_ref = AutoModelForCausalLM.from_pretrained(d / "reference", dtype=torch.float32)
    args = DPOConfig(output_dir=str(d / "trl"), report_to=[], use_cpu=True, beta=0.1, loss_type=["sigmoid"],
                     per_device_train_batch_size=len(PAIRS), save_strategy="no", dataset_num_proc=None)
    trainer = DPOTrainer(model=hf_policy, ref_model=hf_ref, args=args, train_dataset=Dataset.from_list(PAIRS),
                         processing_class=AutoTokenizer.from_pretrained(d / "policy"))
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    return trainer, rows, policy, reference


def trl_metrics(trainer, rows, loss_type, beta, label_smoothing=0.0, swap=False):
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.beta, trainer.label_smoothing = beta, label_smoothing
    if swap:
        rows = [{**r, "chosen_ids": r["rejected_ids"], "rejected_ids": r["chosen_ids"]} for r in rows]
    batch = trainer.data_collator(rows)
    trainer.model.train()
    trainer._metrics["train"].clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss), metrics, batch


METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


@pytest.mark.parametrize(("loss_type", "beta", "smoothing"),
                         [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("robust", 0.1, 0.2), ("ipo", 0.3, 0.0)])
def test_loss_and_rewards_equal_trl_on_the_same_logits(trl_setup, loss_type, beta, smoothing):
    """Same batch, same network (trl's own models): our loss path must give trl's numbers."""
    trainer, rows, _, _ = trl_setup
    loss_ref, m, batch = trl_metrics(trainer, rows, loss_type, beta, smoothing)
    with torch.no_grad():
        loss, metrics = DPOObjective(HFLogits(trainer.ref_model), beta, loss_type, smoothing)(
            HFLogits(trainer.model), batch)
    assert float(loss) == pytest.approx(loss_ref, rel=1e-6, abs=1e-7)
    for key in METRICS:
        assert metrics[key] == pytest.approx(m[key], rel=1e-6, abs=1e-7), key
    assert abs(metrics["rewards/margins"]) > 1e-3  # policy and reference differ: a real comparison


def test_our_model_gives_trls_numbers(trl_setup):
    """Our Transformer (the same weights as the exported HF Llama) gives the same log-probs and loss."""
    trainer, rows, policy, reference = trl_setup
    loss_ref, m, batch = trl_metrics(trainer, rows, "sigmoid", 0.1)
    with torch.no_grad():
        loss, metrics = DPOObjective(reference, 0.1)(policy.eval(), batch)
    assert float(loss) == pytest.approx(loss_ref, rel=1e-4)
    for key in ("logps/chosen", "logps/rejected"):
        assert metrics[key] == pytest.approx(m[key], rel=1e-5), key
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert metrics[key] == pytest.approx(m[key], abs=1e-4), key  # beta * (difference of two ~-30 sums)


def test_label_smoothing_is_the_mix_of_both_label_orders(trl_setup):
    """cDPO: (1 - e) * loss(chosen > rejected) + e * loss(rejected > chosen), both from trl's sigmoid loss."""
    trainer, rows, _, _ = trl_setup
    e, beta = 0.25, 0.2
    straight, _, batch = trl_metrics(trainer, rows, "sigmoid", beta)
    swapped, _, _ = trl_metrics(trainer, rows, "sigmoid", beta, swap=True)
    with torch.no_grad():
        loss, _ = DPOObjective(HFLogits(trainer.ref_model), beta, "sigmoid", e)(HFLogits(trainer.model), batch)
    assert float(loss) == pytest.approx((1 - e) * straight + e * swapped, rel=1e-6)


def test_sft_term_equals_trls_sigmoid_plus_sft(trl_setup):
    """RPO: sigmoid DPO + coef * NLL(chosen) = trl's loss_type=["sigmoid", "sft"] with weights [1, coef]."""
    trainer, rows, _, _ = trl_setup
    coef = 0.7
    trainer.loss_types, trainer.loss_weights, trainer.beta = ["sigmoid", "sft"], [1.0, coef], 0.1
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        expected = float(trainer.compute_loss(trainer.model, batch))
        loss, _ = DPOObjective(HFLogits(trainer.ref_model), 0.1, sft_coef=coef)(HFLogits(trainer.model), batch)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_per_pair_rewards_equal_trl(trl_setup):
    trainer, rows, _, _ = trl_setup
    for row in rows:
        _, m, batch = trl_metrics(trainer, [row], "sigmoid", 0.1)
        with torch.no_grad():
            logps = sequence_logps(HFLogits(trainer.model), batch["input_ids"], batch["completion_mask"])
            ref = sequence_logps(HFLogits(trainer.ref_model), batch["input_ids"], batch["completion_mask"])
        _, r_c, r_r = dpo_loss(logps[:1], logps[1:], ref[:1], ref[1:], beta=0.1)
        assert float(r_c) == pytest.approx(m["rewards/chosen"], rel=1e-6, abs=1e-7)
        assert float(r_r) == pytest.approx(m["rewards/rejected"], rel=1e-6, abs=1e-7)
