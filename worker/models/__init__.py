"""The models room: everything that touches a model's weights, used by the runners (and by
fine-tuning) and never by the control worker (an import contract keeps ``worker.control`` and
``worker.kinds`` off this package and torch).

- ``cache``: fetching a model directory, the memory check before loading, and the warm models
  of a worker process (``ModelCache``, an LRU; ``cache_for`` gives a context's);
- ``loaded``: a model loaded for one task, as the runners hold it (``LoadedModel``), and the
  device models load on;
- ``text``: Hugging Face text models (load; predict ``embed``, ``classify``, ``generate``);
- ``seq2seq``: sequence-to-sequence models (``text2text``: predict, fine-tune loss, metrics);
- ``vision``: image models (load, prepare an image, predict);
- ``onnx``: users' own ONNX networks under onnxruntime (load, read a record, predict);
- ``adapters``: LoRA adapters served over warm bases;
- ``hf``: what inference and training share about Hugging Face models;
- ``chat``: chat messages rendered with a model's template.

- ``engines/``: generation engines behind one interface (Barge's batched decode loop,
  transformers' continuous batching, vLLM).

torch and transformers are imported inside functions: importing a module here is
cheap. Imports: ``barge``, ``worker.context``, ``worker.metrics``; never ``api`` or ``cli``.
"""
