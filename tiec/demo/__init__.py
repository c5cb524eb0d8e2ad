"""Small demo models trained on scikit-learn's digits (work in progress: see the demo-models issue).

This package is imported only on demand; it needs the ``demo`` extra (diffusers, scikit-learn).
"""
