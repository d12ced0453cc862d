"""Conversion of the official TensorFlow GH-Feat / StyleGAN v1 pickles (``ghfeat convert``), without TensorFlow.

* :mod:`.pickle_reader`: a budgeted pickle opcode interpreter that executes nothing;
* :mod:`.tf_pickle`: the official network pickles on top of it (admitted globals, ``Network`` state, static kwargs);
* :mod:`.weight_mapping`: official TF variable names and layouts -> the PyTorch state dicts;
* :mod:`.convert`: the conversion into model folders, all or nothing;
* :mod:`.command`: the ``ghfeat convert`` command line.
"""
