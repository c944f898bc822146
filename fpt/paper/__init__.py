"""Floor 6: the paper's experiments as data (budgets, reproduce, report, figures, attention maps, Ray sweeps)."""
