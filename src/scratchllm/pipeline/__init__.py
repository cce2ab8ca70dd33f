"""The capstone: one command from raw text to a served, evaluated model and a report."""
