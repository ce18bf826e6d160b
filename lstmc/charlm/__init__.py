"""The demo behind ``lstmc`` (``python -m lstmc``): a character-level language
model whose recurrent layer is ``lstmc.TimeLSTM``, trained on text every Python
has, reporting validation perplexity against a unigram baseline and a sample.

A tool built on the library, never imported by it. One module per concern:

- ``config``: the defaults, the options of a run (``Config``), ``UsageError``;
- ``corpus``: the text, as character ids cut into training and validation;
- ``model``: the NumPy layers around ``lstmc.TimeLSTM``, ``CharLM``, Adam and
  gradient clipping;
- ``training``: a run from options to exit code, the training loop and sampling;
- ``report``: what is printed and plotted;
- ``cli``: the argument parser and ``main(argv)``.
"""
