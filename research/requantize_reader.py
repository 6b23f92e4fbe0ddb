"""Prompt and generation speed of the reader's GGUF re-quantised to Q4_0 / Q8_0 (issue 37).

The shipped reader is Q4_K_M. llama.cpp repacks some types (Q4_0 above all) into layouts its
AVX2 / AVX-512 kernels run faster, but only where the build has those kernels. This
re-quantises the assembled GGUF in process (``llama_model_quantize``, allow-requantize) into
``--out``, then times a 512-token prompt (best of two) and 64 generated tokens for each, and
prints one greedy answer so a broken file shows. The CPU flags are printed with the figures.

    HF_HUB_OFFLINE=1 .venv/bin/python research/requantize_reader.py --out /tmp/requant q4_0 q8_0
"""

from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "samples/corpus/httpx/timeouts.md"


def quantize(source: Path, kind: str, out: Path) -> Path:
    import llama_cpp

    target = out / f"reader-{kind}.gguf"
    if target.exists():
        return target
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {
        "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    }[kind]
    params.allow_requantize = True
    started = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if rc != 0:
        raise SystemExit(f"quantizing to {kind} failed ({rc})")
    print(
        f"{kind}: quantized in {time.perf_counter() - started:.0f} s, {target.stat().st_size >> 20} MiB"
    )
    return target


def speed(path: Path, threads: int) -> str:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    tokens = llm.tokenize((SAMPLE.read_text() * 3).encode())[:512]
    prompt = []
    for _ in range(2):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        prompt.append(len(tokens) / (time.perf_counter() - started))
    started, n = time.perf_counter(), 0
    for _ in llm.generate(tokens[:8], temp=0.0, reset=True):
        n += 1
        if n == 64:
            break
    generated = n / (time.perf_counter() - started)
    answer = llm.create_completion(
        "Q: What is the default timeout in httpx?\nA:", max_tokens=24, temperature=0.0
    )["choices"][0]["text"]
    return f"pp512 {max(prompt):.1f} tok/s, tg64 {generated:.1f} tok/s | {answer.strip()[:70]!r}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("kinds", nargs="*", choices=("q4_0", "q8_0"), default=["q4_0", "q8_0"])
    ap.add_argument("--out", type=Path, required=True, help="where the re-quantised files go")
    args = ap.parse_args()
    from ragserve.runtime.cpu import physical_cores
    from ragserve.runtime.models import resolve_gguf_model

    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        ),
        [],
    )
    print(
        "CPU flags:", " ".join(f for f in flags if f.startswith(("avx512", "amx")) or f == "avx2")
    )
    source = resolve_gguf_model("builtin:qwen2.5-coder-1.5b-instruct")
    args.out.mkdir(parents=True, exist_ok=True)
    files = {"q4_k_m (shipped)": source} | {k: quantize(source, k, args.out) for k in args.kinds}
    for name, path in files.items():
        print(f"{name}: {speed(path, physical_cores())}")


if __name__ == "__main__":
    main()
