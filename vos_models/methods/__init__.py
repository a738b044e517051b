"""One package per method (``vos_models.methods.<name>``); each registers itself on import.

``vos_models.registry.build_method(name)`` imports the package on demand.
"""
