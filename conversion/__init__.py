"""Scripts of the checkout around the converter, which is ``ghfeat_hf.conversion``: ``convert_official_tf.py`` (the
same as ``ghfeat convert``) and ``push_to_hub.py``."""
