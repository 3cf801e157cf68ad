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
"""
