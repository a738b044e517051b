"""summary.md of a GPU check: stages, tests, kernels against the roofline, model FPS against the
acceptance targets, training steps, long video. Reads only what the stages wrote under OUT."""
from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

#: Issue 9's acceptance targets: GPU, bfloat16, 854x480, one object (frames per second).
FPS_TARGETS = {"rgmp": 150.0, "crvos": 400.0, "ttvos": 400.0, "pcvos": 100.0}


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def test_counts(junit: Path) -> dict:
    """tests, failures, errors, skipped from pytest's JUnit XML, and the commonest skip reasons."""
    if not junit.exists():
        return {}
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    reasons = Counter(el.get("message", "")[:140] for el in root.iter("skipped"))
    counts["skip_reasons"] = reasons.most_common(5)
    return counts


def fps_table(rows: list[dict], dry_run: bool) -> list[str]:
    lines = ["| method | variant | pass | median ms | FPS | peak extra MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        mark = "baseline" if r["variant"] == r["baseline"] else ("yes" if r["passed"] == "True" else "NO")
        time = r["median_ms"] if not r["error"] else f"error: {r['error']}"
        lines.append(f"| {r['op'].replace(' fast paths', '')} ({r['shape']}) | {r['variant']} | {mark} | {time} | "
                     f"{r['items_per_s']} | {r['peak_extra_mb']} |")
    lines += ["", "Acceptance (issue 9: GPU, bfloat16, 854x480, one object; best bfloat16 variant):", "",
              "| method | target FPS | measured FPS (variant) | verdict |", "|---|---|---|---|"]
    for method, target in FPS_TARGETS.items():
        candidates = [(_float(r["items_per_s"]), r["variant"]) for r in rows
                      if r["op"].startswith(method) and "bfloat16" in r["variant"] and not r["error"]]
        candidates = [c for c in candidates if not math.isnan(c[0])]
        if not candidates:
            lines.append(f"| {method} | {target:.0f} | not measured | - |")
            continue
        fps, variant = max(candidates)
        verdict = "not applicable (dry run: CPU, toy size)" if dry_run else ("meets" if fps >= target else "MISSES")
        lines.append(f"| {method} | {target:.0f} | {fps:.1f} ({variant}) | {verdict} |")
    return lines


def roofline_section(rows: list[dict], dry_run: bool) -> list[str]:
    if not rows:
        return ["No comparison (the kernels or roofline stage did not finish)."]
    verdicts = Counter(r["verdict"] for r in rows)
    lines = [("Dry run: CPU times against H200 floors say nothing about the kernels; this checks that every "
              "measured row finds its roofline entry. " if dry_run else "")
             + "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())) + ".", "",
             "| op | shape | direction | dtype | variant | measured us | floor us | bound | target us | "
             "attained (floor / measured) | verdict | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['shape']} | {r['direction']} | {r['dtype']} | {r['variant']} | {r['measured_us']} | "
                     f"{r['floor_us']} | {r['bound']} ({float(r['target_fraction']):.0%}) | {r['target_us']} | "
                     f"{r['attained_fraction']} | {r['verdict']} | {r['note']} |")
    return lines


def write_summary(out: Path, outcomes, header: list[str], dry_run: bool) -> Path:
    lines = ["# GPU check" + (" (dry run: CPU, toy sizes)" if dry_run else ""), "", *header, "",
             "## Stages", "", "| stage | status | seconds | time box s | detail | log |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.name} | {o.status} | {o.seconds:.1f} | {o.timeout_s:.0f} | {o.detail} | {o.log} |")
    counts = test_counts(out / "tests" / "junit.xml")
    lines += ["", "## Tests", ""]
    if counts:
        lines.append(f"{counts['tests']} tests: {counts['failures']} failed, {counts['errors']} errors, "
                     f"{counts['skipped']} skipped.")
        lines += [f"- skipped {n}x: {reason}" for reason, n in counts["skip_reasons"]]
    else:
        done = out / "tests" / "failures.txt.done"
        ran = len(done.read_text().splitlines()) if done.exists() else 0
        lines.append(f"No JUnit report (the tests stage did not run to its end); {ran} tests finished before it stopped.")
    failures = out / "tests" / "failures.txt"
    if failures.exists() and failures.read_text().strip():
        failed = [line[len("=== FAILED "):] for line in failures.read_text().splitlines() if line.startswith("=== FAILED ")]
        lines += ["", f"Failed ({len(failed)}; tracebacks in tests/failures.txt):", ""]
        lines += [f"- {name}" for name in failed]
    lines += ["", "## Kernels against the H200 roofline", "", *roofline_section(_rows(out / "roofline_comparison.csv"),
                                                                              dry_run)]
    models = _rows(out / "models" / "models.csv") + _rows(out / "models_compile" / "models.csv")
    lines += ["", "## Models: frames per second and peak memory", ""]
    lines += fps_table(models, dry_run) if models else ["No model rows (the models stage did not finish)."]
    lines += ["", "## Training step (fused vs reference ops)", "", "| method | shape | variant | pass | median ms | "
              "clips per second | peak extra MB |", "|---|---|---|---|---|---|---|"]
    for r in _rows(out / "train" / "train_step.csv"):
        mark = "baseline" if r["variant"] == r["baseline"] else ("yes" if r["passed"] == "True" else "NO")
        lines.append(f"| {r['op']} | {r['shape']} | {r['variant']} | {mark} | {r['median_ms'] or r['error']} | "
                     f"{r['items_per_s']} | {r['peak_extra_mb']} |")
    verdict = [line for line in (out / "logs" / "long-video.log").read_text().splitlines()
               if line.startswith("long_video:")] if (out / "logs" / "long-video.log").exists() else []
    lines += ["", "## Long video", "", *(verdict or ["No verdict (the long-video stage did not finish)."])]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary
