"""Stand-in for Pillow on the lent GPU machine, which has no Pillow (issue 15's package list).

vos_models imports PIL at module level (vos_models/data/frames.py, palette.py) for reading and
writing image files, which the GPU check never does: it segments synthetic frames. This module
lets those imports succeed and makes every use fail loudly. scripts/gpu_check puts it on
PYTHONPATH only where `import PIL` fails, and says so in its first line.
"""


class UnidentifiedImageError(OSError):
    """Never raised by this stand-in (no image is ever opened); exists for `except` clauses."""


class _Missing:
    def __getattr__(self, name):
        raise ImportError(f"PIL.Image.{name}: Pillow is not installed on this machine (scripts/gpu_check put a "
                          "stand-in on PYTHONPATH so that vos_models imports; image files cannot be read or written)")


Image = _Missing()
