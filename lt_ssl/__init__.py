"""lt-ssl: self-supervised pre-training on class-imbalanced image data (offline clustering + distillation)."""

__version__ = "0.1.0"
