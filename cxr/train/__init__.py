"""Training: torch + torchvision. Imports cxr.runtime for preprocessing, never the other way round."""
