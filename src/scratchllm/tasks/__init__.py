"""Checkable tasks, below every stage that uses them: the embedded instruction set with exact answers
(``instruct``: fine-tuning, alignment) and the evaluation task specs, their data files and the built-in
registry (``specs``: eval scores them, data's decontamination reads them)."""
