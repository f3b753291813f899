"""The Celery worker: thin tasks over plain functions. Where each behaviour lives:

- ``celery_app``: the Celery app and the per-process start (``worker_process_init``);
- ``tasks``: the Celery tasks (ids in, one plain function call);
- ``context``: per-process resources and the task scopes (``session()``, ``unit_of_work()``:
  the outbox, messages sent after the commit);
- ``lifecycle``: a unit of work's claim, run and every way it ends (``Outcome``);
  ``lease``: the claimed unit and the lease its attempt holds (``Stop``, ``LeaseLost``);
- ``takeover``: taking over a unit whose worker died, as soon as its lease ends;
- ``kinds``: which runner a job's spec gets; ``runners/``: the runners; ``inference``: running a text shard;
  ``image_inference``: an image shard; ``openai_batch``: a shard of an OpenAI batch;
  ``onnxcolumns``: the columnar path of feature-only ONNX models over Parquet; ``shard``: what
  the shard runners share; ``prefetch``: reading ahead on a background thread;
  ``finetune/``: running a fine-tune (``run``, ``checkpoints``, ``training``, ``data``, ...);
- ``models/``: fetching, caching, loading models and predicting; ``hf``: what inference and
  training share about Hugging Face models; ``seq2seq``: sequence-to-sequence models
  (``text2text``); ``vision``: image models; ``onnxmodels``: ONNX models under onnxruntime;
  ``adapters``: LoRA adapters over warm bases; ``chat``: chat messages rendered with a model's
  template; ``outputs``: part files and record ids;
- ``control/``: ``planner``: splitting a job into shards; ``finalize``: the manifest and the final state;
  ``reconciler``: re-sending lost or expired work; ``drops``: drop folders;
- ``metrics``: the worker's Prometheus metrics; ``flower``: the ``barge flower`` process
  (Celery's ``flower`` command with Flower's open pages behind its auth).

The worker may import ``services``, ``db`` and ``barge``; never ``api`` or ``cli``.
"""
