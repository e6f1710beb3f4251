"""BAGEL's parts, one concept per module, named as the official checkpoint's keys.

``config`` (the three towers' dataclasses), ``patchify`` and ``positions`` (NaViT patches, position ids, sin-cos
tables, RoPE), ``timestep``, ``masks`` and ``attention`` (who may look at whom, and the one attention call),
``qwen2_mot`` (the MoT decoder), ``siglip`` (the ViT), ``autoencoder`` (FLUX), ``batch`` (one packed training
batch), ``bagel`` (the whole model and its training ``forward``), and ``checks`` (checking one value, used by
every layer above). Imports nothing else of the package.
"""
