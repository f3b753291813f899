"""Models: ``cache`` (fetching, caching, loading, predicting), ``hf``, ``seq2seq``, ``vision``,
``onnx``, ``adapters``, ``chat``."""
