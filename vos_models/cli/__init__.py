"""Command lines: vos-segment, vos-evaluate, vos-train (also ``python -m vos_models.cli.<name>``)."""
