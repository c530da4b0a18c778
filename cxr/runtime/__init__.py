"""The torch-free base layer: reading images, the preprocessing contract, the model card, scoring, results.

Nothing under cxr.runtime may import torch (a test enforces it).
"""
