"""The native decode step of GPTBigCode on x86 CPUs (`_decode.c`), built on first use and called through ctypes.

A decode step (one new token for each of B sequences) goes through every layer in one C call on the
torch thread pool's cores: products on weights packed once into panels of output columns (float32,
bfloat16, or int8 with AVX512-VNNI), layer norms, multi-query attention over the runner's own KV cache,
GELU. Kernels for AVX-512 and for AVX2 + FMA (float32 and bfloat16 there; int8 stays on torch).
At batch 1-32 on two cores this is where torch spent its time in calls rather than arithmetic, and the
kernels stream the weights faster than oneDNN's. Prefill stays on the torch forward (oneDNN's products
are faster there); both write the same cache.

A row's result never depends on the rows beside it (each output is one fixed chain of fused
multiply-adds; int8 sums are exact), so a sequence decodes the same alone or in a batch.

The library is compiled once per source and CPU with the host's C compiler (`cc`, or `$CC`) into
`$CODEINSTRUCT_CACHE/native` (default `~/.cache/codeinstruct/native`) and reused, for the host's CPU
(`-march=native`; `CODEINSTRUCT_NATIVE_MARCH` names another target, e.g. `haswell` for a library that
also runs on older CPUs); without a compiler, on a CPU with neither AVX-512 nor AVX2, or with
`CODEINSTRUCT_NATIVE=0`, the torch forward runs instead, unchanged.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_decode.c")
F32, BF16, I8 = 0, 1, 2
ACT_GELU_TANH = 1
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")  # tanh-approximated GELU (gelu_fast: same formula)


class _Linear(ctypes.Structure):
    _fields_ = [
        ("fmt", ctypes.c_int32),
        ("k", ctypes.c_int32),
        ("n", ctypes.c_int32),
        ("n_panels", ctypes.c_int32),
        ("k4", ctypes.c_int32),
        ("w", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("wsum", ctypes.c_void_p),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("ln1_w", ctypes.c_void_p),
        ("ln1_b", ctypes.c_void_p),
        ("ln2_w", ctypes.c_void_p),
        ("ln2_b", ctypes.c_void_p),
        ("attn", _Linear),
        ("proj", _Linear),
        ("fc", _Linear),
        ("mlp_proj", _Linear),
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("n_layer", ctypes.c_int32),
        ("embed", ctypes.c_int32),
        ("heads", ctypes.c_int32),
        ("kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("max_len", ctypes.c_int32),
        ("inner", ctypes.c_int32),
        ("multi_query", ctypes.c_int32),
        ("act_dtype", ctypes.c_int32),
        ("act", ctypes.c_int32),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("wte", ctypes.c_void_p),
        ("wpe", ctypes.c_void_p),
        ("lnf_w", ctypes.c_void_p),
        ("lnf_b", ctypes.c_void_p),
        ("lm_head", _Linear),
        ("layers", ctypes.POINTER(_Layer)),
    ]


def _enabled() -> bool:
    return os.environ.get("CODEINSTRUCT_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    root = os.environ.get("CODEINSTRUCT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "codeinstruct")
    return Path(root) / "native"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


_LIB: ctypes.CDLL | None | bool = False  # False: not tried yet


def library() -> ctypes.CDLL | None:
    """The compiled library, built on first use; None where it cannot be built or used here."""
    global _LIB
    if _LIB is False:
        _LIB = build() if _enabled() else None
    return _LIB


def build(march: str | None = None) -> ctypes.CDLL | None:
    """The library compiled for `march` (default `$CODEINSTRUCT_NATIVE_MARCH` or the host's CPU, "native"),
    from the cache when it is there; None where it cannot be built or has no kernels for that target."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler or not SOURCE.is_file():
        log.info("native decode off: no C compiler")
        return None
    march = march or os.environ.get("CODEINSTRUCT_NATIVE_MARCH") or "native"
    flags = ["-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC"]
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *flags, _cpu_flags()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"decode-{key}.so"
    if not target.is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            try:
                subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE)], check=True, capture_output=True, timeout=300)
                os.replace(tmp, target)  # whole or not at all: a concurrent build writes the same bytes
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", b"") or b""
            log.info("native decode off: build failed: %s %s", err, detail.decode(errors="replace")[-500:])
            return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as err:
        log.info("native decode off: %s", err)
        return None
    lib.ci_features.restype = ctypes.c_int
    lib.ci_panel.restype = ctypes.c_int
    lib.ci_decode.restype = ctypes.c_int
    lib.ci_decode.argtypes = [ctypes.POINTER(_Model), ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int]
    lib.ci_linear.restype = ctypes.c_int
    lib.ci_linear.argtypes = [ctypes.POINTER(_Linear), ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.ci_linear.argtypes += [ctypes.c_int, ctypes.c_int]
    if not lib.ci_features() & 1:
        log.info("native decode off: this CPU (or compiler) has neither AVX-512 nor AVX2")
        return None
    return lib


def has_int8() -> bool:
    lib = library()
    return lib is not None and bool(lib.ci_features() & 2)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 matrix [N, K] as int8 with one scale per row (output): (q [N, K] int8, scale [N])."""
    scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


class PackedLinear:
    """A matrix [N, K] (+ bias) packed for the native kernels; keeps its tensors alive."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, fmt: int):
        n, k = weight.shape
        if k % 16:
            raise ValueError(f"native products need inputs in multiples of 16, not {k}")
        panel = library().ci_panel()
        panels = -(-n // panel)
        padded = panels * panel
        w = weight.detach()
        self.scale = self.wsum = None
        k4 = 0
        if fmt == I8:
            q, scale = quantize_rows(w.float())
            k4 = -(-k // 4)
            q = torch.nn.functional.pad(q, (0, 4 * k4 - k, 0, padded - n))
            self.packed = q.view(panels, panel, k4, 4).permute(0, 2, 1, 3).contiguous()
            self.scale = torch.nn.functional.pad(scale.float(), (0, padded - n)).contiguous()
            self.wsum = (128 * q.to(torch.int32).sum(1)).to(torch.int32).contiguous()
        elif fmt == BF16 and library().ci_features() & 4:  # pairs of inputs, for AVX512-BF16's dot products
            k4 = -(-k // 2)
            w = torch.nn.functional.pad(w.to(torch.bfloat16), (0, 2 * k4 - k, 0, padded - n))
            self.packed = w.view(panels, panel, k4, 2).permute(0, 2, 1, 3).contiguous()
        else:
            dtype = torch.float32 if fmt == F32 else torch.bfloat16
            w = torch.nn.functional.pad(w.to(dtype), (0, 0, 0, padded - n))
            self.packed = w.view(panels, panel, k).transpose(1, 2).contiguous()
        self.bias = None
        if bias is not None:
            self.bias = torch.nn.functional.pad(bias.detach().float(), (0, padded - n)).contiguous()
        self.n, self.k = n, k
        self.struct = _Linear(
            fmt, k, n, panels, k4, self.packed.data_ptr(), _ptr(self.bias), _ptr(self.scale), _ptr(self.wsum)
        )

    @property
    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """x [M, K] float32 -> [M, N] float32 through the native kernel (tests and benchmarks)."""
        x = x.detach().float().contiguous()
        out = torch.empty((x.shape[0], self.n), dtype=torch.float32)
        rc = library().ci_linear(
            ctypes.byref(self.struct), x.data_ptr(), x.shape[0], out.data_ptr(), int(gelu), torch.get_num_threads()
        )
        if rc:
            raise RuntimeError(f"native product failed ({rc})")
        return out


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def unsupported(runner, weights: str) -> str | None:
    """Why the native step cannot run this runner's model here (None: it can)."""
    if runner.device.type != "cpu":
        return "not on the CPU"
    if weights != "int8" and runner.dtype not in (torch.float32, torch.bfloat16):
        return f"{runner.dtype} weights"
    if runner.activation not in _GELU_TANH:
        return f"activation {runner.activation}"
    if runner.embed % 16 or runner.head_dim % 16 or runner.inner % 16:
        return "widths that are not multiples of 16"
    eps = {runner.ln_f[2]} | {e for blk in runner.blocks for e in (blk[0][2], blk[3][2])}
    if len(eps) != 1:
        return "layer norms with different epsilons"
    if library() is None:  # last: the first call builds it
        return "not built here"
    if weights == "int8" and not has_int8():
        return "int8 needs AVX512-VNNI"
    return None


class NativeDecoder:
    """`GPTBigCodeRunner.decode` through one native call; built from the runner's (already loaded) model."""

    def __init__(self, runner, model, weights: str):
        t = model.transformer
        fmt = I8 if weights == "int8" else (F32 if runner.dtype == torch.float32 else BF16)
        self.lib = library()
        f32 = lambda p: p.detach().float().contiguous()  # noqa: E731
        self.keep: list = []

        def keep(x):
            self.keep.append(x)
            return x

        layers = []
        for i, b in enumerate(t.h):
            lins = [
                keep(PackedLinear(m.weight, m.bias, fmt))
                for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
            ]
            norms = [keep(f32(p)) for p in (b.ln_1.weight, b.ln_1.bias, b.ln_2.weight, b.ln_2.bias)]
            layers.append(
                _Layer(
                    *[p.data_ptr() for p in norms],
                    *[lin.struct for lin in lins],
                    runner.k[i].data_ptr(),
                    runner.v[i].data_ptr(),
                )
            )
        self.lm_head = keep(PackedLinear(model.lm_head.weight, None, fmt))
        self.layers = (_Layer * len(layers))(*layers)
        wte, wpe = keep(runner.wte.detach().contiguous()), keep(runner.wpe.detach().contiguous())
        lnf_w, lnf_b = keep(f32(t.ln_f.weight)), keep(f32(t.ln_f.bias))
        self.model = _Model(
            len(layers),
            runner.embed,
            runner.heads,
            runner.kv_heads,
            runner.head_dim,
            runner.max_len,
            runner.inner,
            int(runner.multi_query),
            BF16 if wte.dtype == torch.bfloat16 else F32,
            ACT_GELU_TANH,
            runner.ln_f[2],
            runner.scale,
            wte.data_ptr(),
            wpe.data_ptr(),
            lnf_w.data_ptr(),
            lnf_b.data_ptr(),
            self.lm_head.struct,
            self.layers,
        )
        self.vocab = self.lm_head.n
        self.slots, self.max_len, self.rows = runner.k[0].shape[0], runner.max_len, wte.shape[0]

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        b = len(slots)
        # the C step trusts its indices: out of range, the torch forward would raise, this would write anywhere
        if not (
            b
            and 0 <= min(slots) <= max(slots) < self.slots
            and 0 <= min(positions) <= max(positions) < self.max_len
            and 0 <= min(tokens) <= max(tokens) < self.rows
        ):
            raise IndexError(f"decode step out of range: slots {slots}, positions {positions}, tokens {tokens}")
        index = torch.tensor([tokens, positions, slots], dtype=torch.int64)
        logits = torch.empty((b, self.vocab), dtype=torch.float32)
        base, stride = index.data_ptr(), b * 8
        rc = self.lib.ci_decode(
            ctypes.byref(self.model), b, base, base + stride, base + 2 * stride, logits.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        if rc:
            raise RuntimeError(f"native decode step failed ({rc})")
        return logits
