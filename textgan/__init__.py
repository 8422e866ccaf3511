"""SeqGAN text generation: the SeqGAN oracle benchmark and COCO captions against a tuned MLE baseline."""

__version__ = "0.1.0"
