"""Fine-tuning: one unit of work per job, trained in slices under a lease.

- ``run``: the fine-tune kind's run step (load data and model, resume, train, checkpoint, hand
  off, finish and register the model);
- ``checkpoints``: writing, pruning and (only from this job's own files) restoring checkpoints;
- ``training``: the ``Trainer`` (model, optimizer, schedule, losses, evaluation) as plain code;
- ``lora``: LoRA adapters (peft) over a frozen base: wrapping, adapter-only checkpoints, saving
  the adapter or the merged model;
- ``epochs``: the models of the last epochs (``epoch_models``), kept beside the registered one;
- ``metrics``: validation metrics as plain Python (per-class precision/recall/F1, macro-F1,
  confusion matrix, exact match).

Reading and checking the datasets is the fine-tune kind's (``worker.kinds.finetune_data``): the
planner checks them too, without torch. Imports: ``barge``, ``db``, ``services``, ``worker``;
never ``api`` or ``cli``.
"""
