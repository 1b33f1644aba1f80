"""glassdetect: tell whether an image is AI-generated without throwing away its fine detail."""
__version__ = "0.1.0"

# The Python API is loaded on first use, so `import glassdetect` stays cheap (no torch).
_LAZY = {"Detector": "inference.api", "Detection": "inference.api", "Crop": "inference.api"}
__all__ = ["Detector", "Detection", "Crop", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
