"""Conversion of the official TensorFlow GH-Feat / StyleGAN v1 pickles."""
