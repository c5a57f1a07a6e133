"""Evaluation: HumanEval (base and instruct) run in a sandbox and scored with pass@k, and the
Open LLM Leaderboard tasks through lm-eval."""
