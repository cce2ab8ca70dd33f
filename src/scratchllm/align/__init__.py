"""Alignment: reward model, DPO, policy optimisation."""
