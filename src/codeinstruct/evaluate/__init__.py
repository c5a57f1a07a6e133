"""Evaluation: HumanEval (base and instruct) run in a sandbox and scored with pass@k, and the
Open LLM Leaderboard tasks through lm-eval.

Data: `benchmarks` (problem files, checksum-checked HumanEval). Generation: `humaneval` (samples on
the engine), `postprocess` (stop words, code extraction). Execution: `sandbox` and `sandbox_boot`
(namespaces, rlimits, fork servers). Scoring: `scoring` (outcomes, results JSON), `passk`.
`leaderboard`: lm-eval's tasks on a local model.
"""
