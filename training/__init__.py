"""Training scripts for GH-Feat (StyleGAN v1 pre-training and encoder training) on top of accelerate."""
