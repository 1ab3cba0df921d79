"""handserve: labelled images in, a served and versioned image classifier out.

``handserve.images`` and ``handserve.artifacts`` are the contract between ``training/`` and
``service/``; neither imports TensorFlow.
"""

__version__ = "0.1.0"
