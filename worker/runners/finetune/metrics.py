"""Evaluation metrics of a fine-tune's validation data, as plain Python (no torch, no
scikit-learn at run time; the tests check them against scikit-learn's).

Imports: nothing of ours.
"""

from __future__ import annotations

from typing import Any


def classification_metrics(
    truth: list[int], predicted: list[int], labels: list[str]
) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, macro-F1 and the confusion matrix (rows:
    the true label, columns: the predicted one, both in ``labels`` order). A ratio whose
    denominator is 0 is 0, as scikit-learn's ``zero_division=0``."""
    n = len(labels)
    confusion = [[0] * n for _ in range(n)]
    for t, p in zip(truth, predicted, strict=True):
        confusion[t][p] += 1
    per_class: dict[str, dict[str, float | int]] = {}
    f1s = []
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted_i = sum(confusion[r][i] for r in range(n))
        actual_i = sum(confusion[i])
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / actual_i if actual_i else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[label] = {
            "precision": round(precision, 6),
            "recall": round(recall, 6),
            "f1": round(f1, 6),
            "support": actual_i,
        }
    return {
        "validation_macro_f1": round(sum(f1s) / max(1, n), 6),
        "validation_per_class": per_class,
        "validation_confusion_matrix": {"labels": list(labels), "matrix": confusion},
    }


def normalise_answer(text: str) -> str:
    """What exact match compares: the text without surrounding whitespace, spaces collapsed."""
    return " ".join(text.split())


def exact_match(answers: list[str], expected: list[str]) -> float:
    """The share of answers equal to the expected text (``normalise_answer`` of each)."""
    if not expected:
        return 0.0
    right = sum(
        normalise_answer(a) == normalise_answer(e) for a, e in zip(answers, expected, strict=True)
    )
    return round(right / len(expected), 6)
