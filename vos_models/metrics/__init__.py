"""J&F: the DAVIS region and boundary measures and the semi-supervised evaluation protocol."""
from .evaluate import EvaluationResult, ObjectScore, evaluate_folders, evaluate_sequence
from .jf import boundary_precision_recall, boundary_radius, db_statistics, disk, f_measure, jaccard, seg2bmap

__all__ = ["jaccard", "f_measure", "boundary_precision_recall", "boundary_radius", "seg2bmap", "disk",
           "db_statistics", "evaluate_sequence", "evaluate_folders", "EvaluationResult", "ObjectScore"]
