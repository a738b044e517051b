# Held-out synthetic J&F: CRVOS checkpoint vs copying the first mask (copy-previous).
import sys, torch
from vos_models.registry import build_method, load_method
from vos_models.training.validation import synthetic_validation_videos, validate
torch.manual_seed(0)
videos = synthetic_validation_videos(32, size=(64, 64), num_frames=8, max_objects=2)  # seed 12345: not a training stream
for name, method in [("copy-first-mask", build_method("copy-previous")),
                     ("crvos", load_method(sys.argv[1], expected_method="crvos").eval())]:
    s = validate(method, videos).global_scores
    print(f"{name}: J&F {s['J&F-Mean']:.4f}  J {s['J-Mean']:.4f}  F {s['F-Mean']:.4f}")
