"""Sequence-to-sequence models (``text2text``: translation, summarisation) on Hugging Face's
``AutoModelForSeq2SeqLM``: one inference batch with its token usage, the fine-tune loss on
``{source, target}`` pairs, and the text metrics of an evaluation (BLEU, chrF, exact match).

torch, transformers and sacrebleu are imported inside the functions, so importing this module is
cheap. Imports: ``barge``, ``worker.models.hf``; never ``api`` or ``cli``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.models import hf

IGNORE = -100  # label of target padding: no loss


def predict(loaded: Any, texts: Sequence[str], params: Any, seed: int = 0) -> list[dict[str, Any]]:
    """Generate a target for each source text (``params.prefix`` put before it); one
    ``{"text", "usage"}`` per text, in order. ``usage`` counts the source's tokens as the
    encoder saw them (after truncation) and the generated tokens, end-of-sequence included."""
    import torch

    loaded.activate()  # a LoRA adapter's base serves this adapter from now on
    tok = loaded.tokenizer
    enc = tok(
        [params.prefix + t for t in texts],
        padding=True,
        truncation=True,
        max_length=loaded.input_tokens(params),
        return_tensors="pt",
    ).to(loaded.device)
    with torch.inference_mode(), loaded.autocast():
        generated = loaded.model.generate(
            **enc,
            max_new_tokens=params.max_new_tokens,
            num_beams=params.num_beams,
            pad_token_id=tok.pad_token_id,
            **hf.sampling(params.temperature, seed),
        )
    texts_out = tok.batch_decode(generated, skip_special_tokens=True)
    prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
    eos = hf.eos_ids(loaded.model, tok)
    out = []
    for row, text, used in zip(generated.tolist(), texts_out, prompt_tokens, strict=True):
        completion, _ = hf.completion(row[1:], eos)  # row[0] is the decoder's start token
        out.append(
            {
                "text": text,
                "usage": {
                    "prompt_tokens": int(used),
                    "completion_tokens": completion,
                    "total_tokens": int(used) + completion,
                },
            }
        )
    return out


# --- fine-tune ------------------------------------------------------------------------------------


def loss(
    model: Any, tokenizer: Any, batch: Sequence[tuple[str, str]], max_length: int, device: Any
) -> tuple[Any, int]:
    """The mean cross-entropy of the targets given the sources (teacher forcing; target
    padding carries no loss), and the batch's tokens, sources and targets, padding left out."""
    enc = tokenizer(
        [s for s, _ in batch],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    target = tokenizer(
        text_target=[t for _, t in batch],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    tokens = int(enc["attention_mask"].sum()) + int(target["attention_mask"].sum())
    labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, IGNORE)
    return model(**enc.to(device), labels=labels.to(device)).loss, tokens


def generate_texts(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    *,
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    device: Any,
) -> list[str]:
    """Greedy outputs for ``sources`` (the model's mode is left as it was)."""
    import torch

    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(sources), batch_size):
            enc = tokenizer(
                list(sources[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            generated = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
            )
            out.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
    return out


def target_tokens(tokenizer: Any, targets: Sequence[str]) -> int:
    """The most tokens one of ``targets`` takes (end-of-sequence included)."""
    return max((len(ids) for ids in tokenizer(text_target=list(targets))["input_ids"]), default=1)


def text_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, 0–100) and the share of exact matches (after
    stripping surrounding whitespace). BLEU uses the effective order: n-gram orders no
    sentence is long enough for are left out, so targets of one to three words score (the
    standard 4-gram BLEU of a corpus of such targets is always 0); on longer targets it is the
    standard BLEU."""
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.chrf import CHRF

    hyps, refs = list(hypotheses), list(references)
    exact = sum(h.strip() == r.strip() for h, r in zip(hyps, refs, strict=True))
    bleu = BLEU(effective_order=True).corpus_score(hyps, [refs]).score
    return {
        "validation_bleu": round(float(bleu), 4),
        "validation_chrf": round(float(CHRF().corpus_score(hyps, [refs]).score), 4),
        "validation_exact_match": round(exact / max(1, len(refs)), 6),
    }
