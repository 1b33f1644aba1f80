"""glassdetect: tell whether an image is AI-generated without throwing away its fine detail."""
__version__ = "0.1.0"
