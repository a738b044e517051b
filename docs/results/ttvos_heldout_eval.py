# Held-out synthetic J&F: TTVOS checkpoints vs copying the first mask (copy-previous).
# usage: python docs/results/ttvos_heldout_eval.py COUNT CHECKPOINT [CHECKPOINT ...]
import sys
import torch
from vos_models.registry import build_method, load_method
from vos_models.training.validation import synthetic_validation_videos, validate
torch.manual_seed(0)
count = int(sys.argv[1])
videos = synthetic_validation_videos(count, size=(64, 96), num_frames=8, max_objects=2)  # seed 12345: not a training stream
methods = [("copy-first-mask", build_method("copy-previous"))]
methods += [(path, load_method(path, expected_method="ttvos").eval()) for path in sys.argv[2:]]
for name, method in methods:
    s = validate(method, videos).global_scores
    print(f"{name}: {count} videos, J&F {s['J&F-Mean']:.4f}  J {s['J-Mean']:.4f}  F {s['F-Mean']:.4f}", flush=True)
