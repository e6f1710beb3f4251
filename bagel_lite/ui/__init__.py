"""The user interface of the workbook, in ipywidgets: the playground (``Playground``: tabs for text-to-image,
editing, understanding and chat), the explorers beside the notebooks (``SamplerExplorer``), and the controls
they share (``controls.py``: the sampler sliders, defined once). It talks to the model only through
``Pipeline`` and ``Conversation``."""

from .explorers import SamplerExplorer, Trajectory, record_trajectory
from .playground import LABELS, Playground

__all__ = ["LABELS", "Playground", "SamplerExplorer", "Trajectory", "record_trajectory"]
