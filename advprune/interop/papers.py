"""The paper behind each of our pruning methods, as the leaderboards name it.

`ap_key` is the method's key in the Adversarial Pruning benchmark's taxonomy (`<Name>_<Author><Year><Word>`,
taxonomy/taxonomy.json at the pinned commit, advprune.interop.benchmark.COMMIT) where the benchmark lists the
method (`in_taxonomy`); for the others it is the key a new entry would get by the same rule. `robustbench` is
RobustBench's model-name stem (`<Author><Year><FirstWordOfTheTitle>`). `random` is our sanity baseline, not a
published method: it has no paper.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    ap_key: str
    in_taxonomy: bool
    title: str | None
    authors: str | None
    venue: str | None
    link: str | None

    @property
    def robustbench(self) -> str:
        return self.ap_key.split("_", 1)[1]


SEHWAG = "Vikash Sehwag, Shiqi Wang, Prateek Mittal, Suman Jana"

PAPERS = {
    "lwm": Paper("Sehwag19_Sehwag2019Towards", True, "Towards Compact and Robust Deep Neural Networks", SEHWAG, "arXiv 2019",
                 "https://arxiv.org/pdf/1906.06110.pdf"),
    "hydra": Paper("HYDRA_Sehwag2020Hydra", True, "HYDRA: Pruning Adversarially Robust Neural Networks", SEHWAG, "NeurIPS 2020",
                   "https://arxiv.org/pdf/2002.10509.pdf"),
    "harp": Paper("HARP_Zhao2023Holistic", True, "Holistic Adversarially Robust Pruning", "Qi Zhao, Christian Wressnegger", "ICLR 2023",
                  "https://openreview.net/pdf?id=sAJDi9lD06L"),
    "pwoa": Paper("PwoA_Jian2022Pruning", True, "Pruning Adversarially Robust Neural Networks without Adversarial Examples",
                  "Tong Jian, Zifeng Wang, Yanzhi Wang, Jennifer Dy, Stratis Ioannidis", "ICDM 2022", "https://arxiv.org/pdf/2210.04311.pdf"),
    "mrpf": Paper("MRPF_Bai2024Beyond", False,
                  "Beyond Pruning Criteria: The Dominant Role of Fine-Tuning and Adaptive Ratios in Neural Network Robustness",
                  "Lincen Bai, Hedi Tabia, Raúl Santos-Rodríguez", "arXiv 2024", "https://arxiv.org/pdf/2410.15176"),
    "l1_filter": Paper("L1Filter_Li2017Pruning", False, "Pruning Filters for Efficient ConvNets",
                       "Hao Li, Asim Kadav, Igor Durdanovic, Hanan Samet, Hans Peter Graf", "ICLR 2017", "https://arxiv.org/pdf/1608.08710.pdf"),
    "random": Paper("Random_Baseline", False, None, None, None, None),
}


def paper_of(impl: str, ap_key: str | None = None) -> Paper:
    """The paper of implementation `impl`; `ap_key` (the config's export.ap_keys) replaces its key."""
    paper = PAPERS.get(impl) or Paper(f"{impl.title().replace('_', '')}_Unpublished", False, None, None, None, None)
    if ap_key is not None:
        paper = Paper(ap_key, ap_key == paper.ap_key and paper.in_taxonomy, paper.title, paper.authors, paper.venue, paper.link)
    return paper
