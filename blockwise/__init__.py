"""blockwise: block-wise segmentation of electron-microscopy volumes into neurons."""

__version__ = "0.1.0"
