"""The shard runners: ``records`` (a text shard), ``images`` (an image shard), ``onnx`` (the
columnar path of ONNX models), ``openai_batch`` (a shard of an OpenAI batch), ``finetune/`` (a
fine-tune)."""
