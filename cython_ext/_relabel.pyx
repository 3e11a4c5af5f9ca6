# cython: language_level=3
"""placeholder being written"""

def _loaded():
    return True
