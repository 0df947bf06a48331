"""What the side-by-side benchmarks share: the table they print (each path's rate and its ratio to the
first, the bare model) and their ``--workers`` argument."""

from __future__ import annotations


def print_ratio_table(rows: list[tuple[str, float]], goal: float, on_gpu: bool, shared: str) -> None:
    """``rows``: (path, images/s), the reference first; the verdict is about the second row."""
    (_, bare), (_, measured) = rows[0], rows[1]
    print("| path | img/s | vs bare |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.1f} | {rate / bare:.2f} |")
    print(f"\nGoal ({rows[1][0].split(' (')[0]} >= {goal}× bare): "
          f"{'met' if measured / bare >= goal else 'NOT met'} ({measured / bare:.2f}×).")
    if not on_gpu:
        print(f"(CPU run: the goal is about the GPU; here {shared} share the same cores.)")


def workers_arg(text: str) -> int | str:
    """``auto`` or a number of DataLoader workers (runtime.num_workers)."""
    return "auto" if text == "auto" else int(text)
