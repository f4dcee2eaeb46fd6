"""Training insights: collection during training (collect.py, system.py), rules (rules.py) and the report (report.py)."""
