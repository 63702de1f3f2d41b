"""Hand-written CPU kernels, built on first use with the system C compiler; optional. Callers go through
`kernels/ops.py` (typed: tensors in, a tensor or None out), never through ctypes.

Two libraries, by tier (cpu.py): the AVX2 one (`avx2.c`, for AVX2 and AVX-512 CPUs without VNNI) and the
full one (every source, for AVX-512 VNNI CPUs), so that avx2.c's kernels exist on every x86 tier from AVX2:
- `itf_gemv_w8_f32` (avx2.c): the int8 weight-only product (weights packed by 4 outputs, fp32 rows as int16,
  exact int32 sums, any number of rows); `itf_gpt_step_w8`: a whole int8 weight-only GPT-2 decode step on
  an fp32 KV cache in one call (one or several requests); `itf_gemm_f32_rows`: the exact fp32 product for
  decode rows reading every weight once, each row summed in one order whatever the others; `itf_quantize_u8_avx2`: per-tensor unsigned quantisation to 0..qmax (127 without VNNI).
  `itf_exponential_ratio`, `itf_top_scores` (sampling.c, portable C): torch.multinomial's exponential draws on
  torch's own generator state, the log taken only where the probability is positive (sampling.multinomial);
  each row's k largest scores when they are unique (sampling._top_k_top_p).

`native.c`, `gpt_step.c`, `decode_attention.c` and `attention.c` (AVX-512, the full library only):
- `itf_gemv_s8`: the int8 GEMV of the GPT decode step (any rows; per-row quantisation): activations quantised per row to uint8
  (with a zero point) on the fly, int8 weights packed for AVX-512 VNNI (`vpdpbusd`), fp32 out with scale
  and bias applied, optionally a LayerNorm fused before and GELU or a residual add after. It streams each
  weight byte once for all rows, which fbgemm's dynamic linear does not do at 2-4 rows (beam search):
  `python -m indextts_fast.kernels` times both side by side on GPT-shaped weights.
- `itf_gpt_step` (gpt_step.c): a whole int8 GPT-2 decode step (every block: the GEMVs above around the
  attention below, new keys/values written to the bf16 cache) in one call and one parallel region, for the
  rows of one or several requests (a batched step: products on all rows, attention per request's cache).
- `itf_attend_bf16` (decode_attention.c): one decode step's attention over a bf16 KV cache (S query rows, each
  over its own key list), a row reading only its own prompt and ancestry (its result the same whatever the
  other rows); the beams of a request are taken together over the keys they all list (the same bits).
- `itf_adaln_rms_bf16`, `itf_rope_bf16`, `itf_silu_mul_bf16`, `itf_wavenet_gate_bf16`: the elementwise
  chains of a bf16 DiT step (AdaLN-RMS norm + modulation, rotary embedding from the strided q|k, SwiGLU
  gate, WaveNet tanh·sigmoid gate), one pass each.
- `itf_quantize_u8` / `itf_quantize_u8_bf16`: per-tensor asymmetric uint8 quantisation of fp32 / bf16
  activations (the many-row int8 GEMMs through oneDNN's `qlinear_pointwise`: GPT prefill and latent pass,
  the int8 DiT).
- `itf_attention_bf16` (attention.c): the DiT's non-causal attention (head width 64) on AMX tiles where
  the CPU has AMX-BF16 and Linux grants the tile state (`lib.amx`), else with AVX512-BF16 dot products
  where the CPU has them (`lib.bf16_dot`: AMD Zen 4, Intel Cooper Lake); SDPA otherwise.
- `itf_aa_snake`: BigVGAN's anti-aliased Snake activation (up-sample ×2, Snake, down-sample ×2) per
  channel row in one pass, fp32 arithmetic; `itf_aa_snake_tm_bf16`: the same on a time-major bf16 signal,
  16 channels per vector (the bf16 vocoder stage runs time-major).
All run on torch's OpenMP pool (same libgomp). Only `itf_gemm_f32_rows` serves the fp32 (parity) path.

`load()` returns the full library, or None when the CPU (as `cpu.detect()` sees it, a forced tier included)
has no AVX-512 VNNI; `portable()` the library with avx2.c's kernels (the full one where it loads), or None
below AVX2 or on a CPU that is not x86-64. Either is None — and callers use torch's / oneDNN's / fbgemm's
kernels, after one warning — when no C compiler is found ($CC, cc, gcc), the build fails, or
$INDEXTTS_FAST_KERNELS=0. Shared objects are cached under the data folder, keyed by the sources' hash.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Optional

from ..cpu import cpuinfo, detect  # noqa: F401  (cpuinfo re-exported: mkl_vendor, benches)

SOURCES = ("native.c", "gpt_step.c", "decode_attention.c", "attention.c", "avx2.c", "sampling.c", "simd.h",
           "kernels.h")   # the .c files: one library
FLAGS = ["-O3", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-fopenmp", "-shared", "-fPIC"]
PORTABLE_SOURCES = ("avx2.c", "sampling.c", "kernels.h")     # the AVX2 + FMA tier's library
PORTABLE_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
AMX_FLAGS = ("amx_tile", "amx_bf16", "avx512_bf16")   # attention.c (compiled for them per function)
BF16_DOT_FLAGS = ("avx512_bf16",)                       # attention.c without AMX (VDPBF16PS)


def cpu_supports(flags=CPU_FLAGS) -> bool:
    """Whether the CPU, as `cpu.detect()` sees it (a forced lower tier included), has every flag."""
    have = detect().flags
    return all(f in have for f in flags)


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build(sources: dict[str, bytes], target: Path, flags=FLAGS) -> None:
    """Compile the .c files of `sources` (name -> text; headers beside them) into the shared object `target`."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in sources.items():
            (Path(tmp) / name).write_bytes(text)
        out = target.parent / f".{target.name}.{os.getpid()}.tmp"   # same file system as the target
        units = [str(Path(tmp) / name) for name in sources if name.endswith(".c")]
        proc = subprocess.run([cc, *flags, "-o", str(out), *units], capture_output=True, text=True)
        if proc.returncode:
            out.unlink(missing_ok=True)
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
        os.replace(out, target)  # atomic: concurrent builders never see half a file


_warned: list[str] = []


def _warn_once(message: str) -> None:
    """One warning per process for kernels that cannot be had (not one per library variant)."""
    if not _warned:
        import warnings

        _warned.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _library(sources_names, flags, prefix: str) -> Optional[ctypes.CDLL]:
    """Build (once, cached under the data folder, keyed by the sources' hash and flags) and load a library."""
    import torch  # noqa: F401  (torch's libgomp must be loaded first so the kernel shares its thread pool)

    from ..paths import default_store_dir

    sources = {name: resources.files(__package__).joinpath(name).read_bytes() for name in sources_names}
    digest = hashlib.sha256(b"".join(sources.values()) + " ".join(flags).encode()).hexdigest()[:16]
    target = default_store_dir() / "kernels" / f"{prefix}-{digest}.so"
    try:
        if not target.exists():
            build(sources, target, flags)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError) as e:
        _warn_once(f"native kernels unavailable, using torch's and fbgemm's instead: {e}")
        return None
    _declare_portable(lib)
    return lib


def _enabled() -> bool:
    return os.environ.get("INDEXTTS_FAST_KERNELS", "1") != "0"


@functools.lru_cache(maxsize=None)
def portable() -> Optional[ctypes.CDLL]:
    """The library with the AVX2 kernels (avx2.c): `load()`'s where the CPU has AVX-512 VNNI, else an
    AVX2-only build; None below AVX2 (or on a CPU that is not x86-64), without a compiler, or with
    $INDEXTTS_FAST_KERNELS=0."""
    if not _enabled():
        return None
    full = load()
    if full is not None:
        return full
    caps = detect()
    if not caps.at_least("avx2") or caps.tier == "neon":
        if caps.arch not in ("x86_64", "AMD64"):
            _warn_once(f"native kernels are x86-64 only ({caps.arch}): using torch's kernels")
        return None
    return _library(PORTABLE_SOURCES, PORTABLE_FLAGS, "avx2")


@functools.lru_cache(maxsize=None)
def load() -> Optional[ctypes.CDLL]:
    """The AVX-512 kernel library (every kernel), built and loaded once per process; None when unavailable
    (see module doc)."""
    if not _enabled() or not cpu_supports():
        return None
    lib = _library(SOURCES, FLAGS, "native")
    if lib is None:
        return None
    fn = lib.itf_gemv_s8
    fn.restype = ctypes.c_int
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    # x, M, K, ln_w, ln_b, ln_eps, packed W, Σw, w scales, bias, N, residual, gelu, y, amx
    fn.argtypes = [ptr, i32, i32, ptr, ptr, ctypes.c_float, ptr, ptr, ptr, ptr, i32, ptr, i32, ptr, i32]
    att = lib.itf_attend_bf16
    att.restype = ctypes.c_int
    # q, q row stride, K, V, head stride, keys per row, key lists (or NULL), S, H, d, scale, out
    att.argtypes = [ptr, ctypes.c_long, ptr, ptr, ctypes.c_long, i32, ptr, i32, i32, i32, ctypes.c_float, ptr]
    u16, f32 = ptr, ctypes.c_float
    lib.itf_silu_mul_bf16.restype = None
    lib.itf_silu_mul_bf16.argtypes = [u16, u16, u16, ctypes.c_long]                  # a, b, out, n
    lib.itf_rope_bf16.restype = None       # x, strides b/t/head, B, T, heads, d, table, out
    lib.itf_rope_bf16.argtypes = [u16, ctypes.c_long, ctypes.c_long, ctypes.c_long, i32, i32, i32, i32, ptr, u16]
    lib.itf_adaln_rms_bf16.restype = None  # x, scale, shift, row stride, eps, B, T, D, out
    lib.itf_adaln_rms_bf16.argtypes = [u16, u16, u16, ctypes.c_long, f32, i32, i32, i32, u16]
    lib.itf_wavenet_gate_bf16.restype = None  # a, g, g batch stride, B, H, T, out
    lib.itf_wavenet_gate_bf16.argtypes = [u16, u16, ctypes.c_long, i32, i32, i32, u16]
    lib.itf_aa_snake.restype = ctypes.c_int   # x, rows, T, alpha, 1/beta, 2·up filter, down filter, Tp, out
    lib.itf_aa_snake.argtypes = [ptr, ctypes.c_long, i32, ptr, ptr, ptr, ptr, i32, ptr]
    lib.itf_aa_snake_tm_bf16.restype = ctypes.c_int   # x, B, T, C, alpha, 1/beta, 2·up filter, down filter, out
    lib.itf_aa_snake_tm_bf16.argtypes = [u16, i32, i32, i32, ptr, ptr, ptr, ptr, u16]
    lib.itf_quantize_u8.restype = None    # x, n, out, &scale, &zero point
    lib.itf_quantize_u8.argtypes = [ptr, ctypes.c_long, ptr, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(i32)]
    lib.itf_quantize_u8_bf16.restype = None   # the same on bf16 x
    lib.itf_quantize_u8_bf16.argtypes = lib.itf_quantize_u8.argtypes
    dit_att = lib.itf_attention_bf16
    dit_att.restype = ctypes.c_int
    long = ctypes.c_long  # q, k, v each with (batch, head, time) strides, key lengths, B, H, T, d, scale,
    #                       out + strides, RoPE table (or None), amx
    dit_att.argtypes = [ptr, long, long, long] * 3 + [ptr, i32, i32, i32, i32, f32, ptr, long, long, long, ptr, i32]
    step = lib.itf_gpt_step  # x, rows, D, blocks, block table, eps, groups, group table, H, d, scale, amx
    step.restype = ctypes.c_int
    step.argtypes = [ptr, i32, i32, i32, ptr, f32, i32, ptr, i32, i32, f32, i32]
    lib.amx = cpu_supports(AMX_FLAGS) and lib.itf_amx_init() == 0   # the AMX tiles may only be used when this holds
    lib.amx_int8 = lib.amx and cpu_supports(("amx_int8",))           # TDPBUSD (the batched int8 decode step)
    lib.bf16_dot = cpu_supports(BF16_DOT_FLAGS)                      # VDPBF16PS
    return lib


def _declare_portable(lib: ctypes.CDLL) -> None:
    """argtypes of avx2.c's kernels (in every library)."""
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    for fn in (lib.itf_gemv_w8_f32, lib.itf_gemm_f32_rows):   # x, M, K, W (N, K), scale or NULL, bias or NULL, N, y
        fn.restype = ctypes.c_int
        fn.argtypes = [ptr, i32, i32, ptr, ptr, ptr, i32, ptr]
    step = lib.itf_gpt_step_w8   # x, rows, D, blocks, block table, eps, groups, group table, H, d, scale
    step.restype = ctypes.c_int
    step.argtypes = [ptr, i32, i32, i32, ptr, ctypes.c_float, i32, ptr, i32, i32, ctypes.c_float]
    lib.itf_quantize_u8_avx2.restype = None    # x, n, out, &scale, &zero point, largest level
    lib.itf_quantize_u8_avx2.argtypes = [ptr, ctypes.c_long, ptr, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(i32),
                                         i32]
    lib.itf_exponential_ratio.restype = i32    # generator state image, p, rows, cols, k, ratio, picked (sampling.c)
    lib.itf_exponential_ratio.argtypes = [ptr, ptr, ctypes.c_long, ctypes.c_long, i32, ptr, ptr]
    lib.itf_top_scores.restype = i32           # x, rows, cols, k, values, indices (sampling.c)
    lib.itf_top_scores.argtypes = [ptr, ctypes.c_long, ctypes.c_long, i32, ptr, ptr]
