# In-process TTVOS training loop used for the "explore" runs of train_ttvos.md: Adam on
# SyntheticClipDataset clips through TTVOS.training_loss, held-out J&F every --eval-every steps.
# usage: PYTHONPATH=$PWD OMP_NUM_THREADS=1 python docs/results/ttvos_explore_loop.py --steps 600 --lr 5e-4 --eval-every 100 --cfg '{"train_backbone":"all","frozen_bn":false}'
import sys, time, json, argparse
import torch
from vos_models.registry import build_method
from vos_models.data.datasets import SyntheticClipDataset
from vos_models.training.validation import synthetic_validation_videos, validate
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=200)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--frames", type=int, default=3)
p.add_argument("--bs", type=int, default=4)
p.add_argument("--size", type=int, nargs=2, default=[64, 96])
p.add_argument("--static", action="store_true")
p.add_argument("--cfg", default="{}")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--eval", type=int, default=16)
p.add_argument("--eval-every", type=int, default=0)
p.add_argument("--save", default="")
p.add_argument("--val-frames", type=int, default=8)
a = p.parse_args()
torch.manual_seed(a.seed)
m = build_method("ttvos", **json.loads(a.cfg)).train()
opt = torch.optim.Adam([q for q in m.parameters() if q.requires_grad], lr=a.lr)
ds = SyntheticClipDataset(100000, num_frames=a.frames, size=tuple(a.size), max_objects=2, seed=a.seed)
videos = synthetic_validation_videos(a.eval, size=(64, 96), num_frames=a.val_frames, max_objects=2)
def ev():
    return validate(m, videos).global_scores["J&F-Mean"]
t0 = time.time(); acc = {}
for step in range(1, a.steps + 1):
    items = [ds[(step - 1) * a.bs + i] for i in range(a.bs)]
    batch = {k: torch.stack([it[k] if torch.is_tensor(it[k]) else torch.tensor(it[k]) for it in items]) for k in ("frames", "masks", "num_objects")}
    if a.static:
        batch["frames"] = batch["frames"][:, :1].expand_as(batch["frames"]).contiguous()
        batch["masks"] = batch["masks"][:, :1].expand_as(batch["masks"]).contiguous()
    loss, logs = m.training_loss(batch)
    opt.zero_grad(); loss.backward(); opt.step()
    for k, v in logs.items(): acc[k] = acc.get(k, 0) + v
    if step % 25 == 0:
        print(step, {k: round(v / 25, 3) for k, v in acc.items()}, f"{(time.time()-t0)/step:.2f}s/step", flush=True); acc = {}
    if a.eval_every and step % a.eval_every == 0:
        print("EVAL", step, round(ev(), 4), flush=True)
        if a.save: torch.save(m.state_dict(), f"{a.save}_{step}.pt")
print("FINAL", a, round(ev(), 4), flush=True)
if a.save: torch.save(m.state_dict(), f"{a.save}_final.pt")
