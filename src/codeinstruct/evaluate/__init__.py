"""Evaluation: HumanEval (base and instruct) and HumanEval infilling, run in a sandbox and scored with
pass@k, and the Open LLM Leaderboard tasks through lm-eval.

Data: `benchmarks` (problem files, checksum-checked HumanEval, infilling files). Generation:
`humaneval` (samples on the engine or a server), `infill` (Fill-in-the-Middle samples, and
`run_infill`: generate and score in one call), `endpoint` (any OpenAI-compatible server),
`postprocess` (stop words, code extraction). Execution: `sandbox` and `sandbox_boot`
(namespaces, rlimits, a warm interpreter per slot, CPU-time timeouts). Scoring: `scoring`
(outcomes, results JSON), `passk`. `leaderboard`: lm-eval's tasks on a local model.
"""
