"""cxr: cardiomegaly detection on chest X-rays (research software, not a medical device)."""

__version__ = "0.1.0"
