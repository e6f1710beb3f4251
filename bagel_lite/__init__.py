"""bagel-lite: BAGEL, the unified multimodal model, re-implemented in readable PyTorch.

    import bagel_lite
    pipe = bagel_lite.load("path/to/checkpoint")      # an official-layout folder
    pipe.generate("a red circle on the left").image
    pipe.edit(image, "make the circle blue").image
    pipe.answer(image, "What is in the image?")
"""

from .inference.contexts import Context, ContextFull
from .inference.conversation import Conversation
from .inference.pipeline import Generated, Pipeline, load
from .inference.progress import GenerationStopped, StepInfo, TokenInfo
from .inference.settings import EDIT_SETTINGS, T2I_SETTINGS, ImageSettings
from .inference.text_generation import Answer
from .loading.checkpoint import CheckpointError, load_bagel, save_bagel
from .model.bagel import Bagel
from .model.config import BagelConfig, full, tiny

__all__ = [
    "Answer", "Bagel", "BagelConfig", "CheckpointError", "Context", "ContextFull", "Conversation", "EDIT_SETTINGS",
    "Generated", "GenerationStopped", "ImageSettings", "Pipeline", "StepInfo", "T2I_SETTINGS", "TokenInfo", "full",
    "load", "load_bagel", "save_bagel", "tiny",
]
