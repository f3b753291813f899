"""The runners room: each job kind's run step (``run(ctx, work, lease) -> Result``), named by
the kind's entry in ``worker.kinds`` and imported only on a GPU worker, when a unit of the kind
first runs. A run step loads its model (``worker.models``), works under the unit's lease and
returns what it wrote; the lifecycle settles it.

- ``text``: ``embed``, ``classify``, ``generate`` over Hugging Face models (an ONNX model
  directory is handed to ``onnx``);
- ``text2text``: sequence-to-sequence models;
- ``onnx``: users' ONNX networks: the records path, and the columnar path over Parquet;
- ``records``: what the kinds over text records share: loading the job's model for a shard,
  and the window loop that runs records through a kind's prediction;
- ``images``: image tasks: images fetched and decoded on a thread pool, a window ahead;
- ``openai_batch``: a shard of an OpenAI batch (request lines in, OpenAI output lines out);
- ``generation``: what the generating runners share: a shard's requests through the generation
  engine (``worker.models.engines``) under its lease, and the events that name the engine;
- ``finetune/``: a fine-tune, one unit per job trained in slices.

What the shard runners share (parts, windows, prefetch) is ``worker.shard``. A runner never
imports ``worker.lifecycle`` or ``worker.control``.
Imports: ``barge``, ``db``, ``services``, ``worker.context``, ``worker.kinds`` (a kind's
torch-free helpers), ``worker.lease``, ``worker.metrics``, ``worker.models``, ``worker.shard``;
never ``api`` or ``cli``.
"""
