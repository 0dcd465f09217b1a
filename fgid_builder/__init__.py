"""fgid_builder: everything about one image and one face (no Ray in here)."""

__version__ = "0.1.0"
