"""Thin click commands. Heavy imports happen inside the command bodies so --help and --version stay fast."""
