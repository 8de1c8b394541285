"""lra: data, training and evaluation for lrm models on Long Range Arena and synthetic recall.

Needs the ``[train]`` extra (Lightning, torchmetrics, datasets, ...). ``lrm`` never imports it.
"""
