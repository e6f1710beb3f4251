"""Plots, training curves, the map of BAGEL and the exercises' hidden answers: the workbook's helpers.

``viz`` (plot helpers and verdicts), ``curves`` (training logs and live curves), ``architecture`` (the map and
"you are here"), ``training_views`` (what notebook 05b draws), ``exercises``. General teaching tools: they know
nothing of micro-BAGEL's world, which uses them (``micro.evaluate.image_verdict``).
"""
