"""The E2E NLG metric set: BLEU, NIST, METEOR, ROUGE-L, CIDEr, multi-reference.

Not the official e2e-metrics script (mteval-v13a.pl + pycocoevalcap), but the same measures from maintained
libraries: BLEU with sacrebleu (13a tokenisation), NIST with NLTK (n = 5), METEOR 1.5, ROUGE-L and CIDEr with
pycocoevalcap (METEOR runs its Java jar; without Java it is reported unavailable, not replaced). Texts are
lowercased and tokenised as the COCO tools expect. Scale as the literature reports them: BLEU, METEOR and ROUGE-L
x100; NIST and CIDEr as they come.
"""

from __future__ import annotations

import re
import shutil

import sacrebleu
from nltk.translate.nist_score import corpus_nist

from ffnprune.metrics.references import check_references

_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def tokenize(text: str) -> str:
    return " ".join(_TOKEN.findall(text.lower()))


def multi_reference_bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU (sacrebleu, 13a) with any number of references per hypothesis."""
    most = max(len(group) for group in references)
    streams = [[group[i] if i < len(group) else None for group in references] for i in range(most)]
    return sacrebleu.corpus_bleu(hypotheses, streams, tokenize="13a").score


def multi_reference_nist(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus NIST (NLTK, n = 5) over white-space tokens. Orders longer than every hypothesis have no n-grams and
    add 0 to NIST's sum; NLTK divides by their zero count, so they are left out (all-empty output scores 0)."""
    tokens = [h.split() for h in hypotheses]
    order = min(5, max(len(t) for t in tokens))
    if order == 0:
        return 0.0
    return corpus_nist([[r.split() for r in group] for group in references], tokens, n=order)


def e2e_scores(predictions: list[str], references: list[list[str]]) -> dict:
    check_references(predictions, references)
    hypotheses = [tokenize(p) for p in predictions]
    refs = [[tokenize(r) for r in group] for group in references]
    result = {"bleu": multi_reference_bleu(hypotheses, refs), "nist": multi_reference_nist(hypotheses, refs)}
    coco_refs = {i: group for i, group in enumerate(refs)}
    coco_hyps = {i: [h] for i, h in enumerate(hypotheses)}
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    result["rougeL"] = 100 * float(Rouge().compute_score(coco_refs, coco_hyps)[0])
    result["cider"] = float(Cider().compute_score(coco_refs, coco_hyps)[0])
    if shutil.which("java"):
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # a Java process, ended when the object is collected
        result["meteor"] = 100 * float(meteor.compute_score(coco_refs, coco_hyps)[0])
        del meteor
    else:
        result["meteor"] = None
        result["meteor_unavailable"] = "METEOR 1.5 needs Java, which was not found; install a JRE to compute it"
    result["implementation"] = ("BLEU sacrebleu 13a; NIST nltk n=5; METEOR 1.5, ROUGE-L, CIDEr pycocoevalcap; "
                                "lowercased; BLEU/METEOR/ROUGE-L x100")
    return result
