"""The version of ghfeat-hf (read by the build from here, recorded in every output the library writes)."""

__version__ = "0.2.0"
