"""pass@k: the chance that at least one of k samples passes, estimated without bias from n >= k.

With n samples of a problem of which c pass, the unbiased estimator (Chen et al., 2021) is

    pass@k = 1 - C(n - c, k) / C(n, k)

The binomials overflow floats long before n gets large (C(200, 100) ~ 9e58), so it is computed
as the product  1 - prod_{i = n-c+1}^{n} (1 - k / i),  which is the same number: the ratio of
binomials telescopes into that product. It is 1 when n - c < k (every k-subset holds a pass).
The benchmark's pass@k is the mean over problems, reported only for k <= n of every problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from codeinstruct.errors import CodeinstructError

DEFAULT_KS = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate for one problem with `n` samples of which `c` passed."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise CodeinstructError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """{"pass@k": mean over problems} for each k that every problem has enough samples for.

    `counts` holds (n, c) per problem.
    """
    if not counts:
        return {}
    smallest_n = min(n for n, _ in counts)
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
        for k in sorted(set(ks))
        if 1 <= k <= smallest_n
    }
