"""Prediction, one package: from a checkpoint to scores, submissions and figures.

- :mod:`~skinseg.predict.decisions`: flip TTA, thresholds and gates, and :class:`DecisionRule` (read from a
  checkpoint in one place, at an operating point);
- :mod:`~skinseg.predict.load`: a checkpoint or ensemble file as a model ready to predict;
- :mod:`~skinseg.predict.loop`: the one prediction loop and :func:`evaluate_model` on it;
- :mod:`~skinseg.predict.evaluate`: a checkpoint on a split, both operating points, the decision variants;
- :mod:`~skinseg.predict.submission`: challenge submissions at each image's original size;
- :mod:`~skinseg.predict.ensemble`: the ensemble model, its file, and :func:`build_ensemble`;
- :mod:`~skinseg.predict.collect`: a split's predictions kept for figures and the browser.

Scoring a submission folder needs no model and no torch: :mod:`skinseg.scoring`.
The names below are importable from here; each loads its module on first use.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "DecisionRule": "decisions", "decide": "decisions", "predict_probs": "decisions", "TTA_FLIPS": "decisions",
    "load_for_inference": "load",
    "EvalResult": "loop", "evaluate_model": "loop", "predict_batches": "loop",
    "evaluate_checkpoint": "evaluate", "evaluation_json": "evaluate", "operating_points": "evaluate",
    "decision_variants": "evaluate",
    "predict_folder": "submission", "write_submission": "submission",
    "ModelEnsemble": "ensemble", "build_ensemble": "ensemble",
    "PredictionSet": "collect", "collect_predictions": "collect",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'skinseg.predict' has no attribute {name!r}")
    return getattr(importlib.import_module(f"skinseg.predict.{_HOMES[name]}"), name)
