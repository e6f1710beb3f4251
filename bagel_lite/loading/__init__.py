"""Checkpoint folders in the official layout, GPU placement, the tokenizer and image preprocessing.

``checkpoint`` (read, check and save a folder), ``devices`` (memory estimates, device maps, 4-/8-bit loading),
``tokenizer`` (Qwen2's tokenizer with BAGEL's markers), ``transforms`` (any image -> the model's input). Sits on
``model``.
"""
