"""Speaking the field's formats: checkpoints and leaderboard entries of the Adversarial Pruning benchmark
(pralab/AdversarialPruningBenchmark) and RobustBench, and checkpoints made elsewhere (HYDRA, HARP, RobustBench,
the benchmark, plain state dicts) brought into our networks so that they are evaluated beside ours.

- `papers`: which paper each of our pruning methods reproduces, under the names both leaderboards use;
- `naming`: our state-dict names <-> the names HYDRA, HARP, the benchmark and RobustBench give the same tensors;
- `benchmark`: the benchmark's protocol, model keys, taxonomy entries and its dense, strict-loadable checkpoints;
- `robustbench`: RobustBench's `model_info` entry of a model;
- `layouts`: reading an external checkpoint into one of our architectures (score folding, strict loading, the
  sparsity it claims checked);
- `compact`: removing channels that are exactly zero everywhere (what a structured model looks like once a
  checkpoint has folded it into dense shapes);
- `export`: `advprune export`, everything a submission of a finished run needs.
"""
