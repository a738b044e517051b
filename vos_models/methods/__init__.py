"""One package per method (``vos_models.methods.<name>``); each registers itself on import.

``vos_models.registry.build_method(name)`` imports the package on demand. Every package has the
same files: ``network.py`` (nn modules), ``method.py`` (the VOSMethod and its state dataclass),
``convert.py`` (the public-checkpoint converter, registered with the method), ``training.py``
(the training loss); shared helpers: ``padding.py`` (padding to a stride and cropping back),
``_convert_utils.py`` (the converters' strict key check).
"""
