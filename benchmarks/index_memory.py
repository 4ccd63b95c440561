"""Memory and lookup speed of safehold's in-memory blob index with millions of entries.

Builds ``safehold.repo.index.Index`` from synthetic index files, the way a repository is
opened (``load_file`` per index file, then ``finish_loading``), or with ``Index.add`` calls,
the way a backup session adds blobs (``--mode add``). Reports bytes per chunk two ways:
``Index.nbytes() / len(index)`` (what the index thinks it holds) and the growth of the
process's resident memory (VmRSS, and the peak VmHWM while building), then the lookup rate
for ids that are present and ids that are not. Target: at most 64 bytes per chunk.

Usage::

    python benchmarks/index_memory.py [--entries 2000000] [--blobs-per-pack 12] [--mode load]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import sys
import time

import numpy as np

from safehold.repo.index import Index
from safehold.repo.index_arrays import FILE_DTYPE
from safehold.repo.writer import INDEX_EVERY_PACKS

TARGET_BYTES_PER_CHUNK = 64
ID_WORDS = 4  # a blob id is 32 bytes: four 64-bit words


def memory_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (from /proc/self/status)."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def trim_heap() -> bool:
    """Ask glibc to return freed heap memory to the system; False where there is no malloc_trim.

    The RSS left after this shows how much of the growth is the index itself and how much is
    heap that the loading temporaries freed but the allocator kept.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def synthetic_ids(seed: int, file_number: int, count: int) -> np.ndarray:
    """The ``count`` blob ids of one synthetic index file, as a (count,) array of V32."""
    bits = np.random.SFC64(np.random.SeedSequence([seed, file_number]))
    return bits.random_raw(count * ID_WORDS).view("V32")


def synthetic_file(
    seed: int, file_number: int, count: int, blobs_per_pack: int
) -> tuple[list[bytes], bytes]:
    """(pack table, records) of one index file, as ``encode_index_file`` would produce them."""
    records = np.zeros(count, dtype=FILE_DTYPE)
    records["id"] = synthetic_ids(seed, file_number, count)
    positions = np.arange(count)
    records["pack"] = positions // blobs_per_pack
    records["length"] = 1_398_101  # pyfastcdc's real average for avg=1 MiB, plus overhead
    records["raw"] = 1_398_072
    records["offset"] = positions % blobs_per_pack * 1_398_101
    pack_count = (count + blobs_per_pack - 1) // blobs_per_pack
    pack_bits = np.random.SFC64(np.random.SeedSequence([seed, file_number, 1]))
    pack_table = pack_bits.random_raw(pack_count * ID_WORDS).tobytes()
    packs = [pack_table[i * 32 : (i + 1) * 32] for i in range(pack_count)]
    return packs, records.tobytes()


def file_sizes(entries: int, per_file: int) -> list[int]:
    """How many records each synthetic index file holds."""
    full, rest = divmod(entries, per_file)
    return [per_file] * full + ([rest] if rest else [])


def clocks() -> tuple[float, float]:
    """(wall, CPU time of this process) in seconds."""
    return time.perf_counter(), time.process_time()


def build_by_loading(
    index: Index, sizes: list[int], seed: int, blobs_per_pack: int
) -> tuple[float, float]:
    """Fill ``index`` as Repository.index does: load_file for each file, finish_loading.
    Returns the (wall, CPU) seconds spent in the index's own calls (making the files aside)."""
    wall = cpu = 0.0
    for number, count in enumerate(sizes):
        packs, records = synthetic_file(seed, number, count, blobs_per_pack)
        started, started_cpu = clocks()
        index.load_file(packs, records)
        wall, cpu = wall + time.perf_counter() - started, cpu + time.process_time() - started_cpu
    started, started_cpu = clocks()
    index.finish_loading()
    return wall + time.perf_counter() - started, cpu + time.process_time() - started_cpu


def build_by_adding(
    index: Index, sizes: list[int], seed: int, blobs_per_pack: int
) -> tuple[float, float]:
    """Fill ``index`` as a backup session does: one Index.add per blob. Returns the (wall,
    CPU) seconds spent in the add calls (making the records aside; merges included)."""
    wall = cpu = 0.0
    for number, count in enumerate(sizes):
        packs, records = synthetic_file(seed, number, count, blobs_per_pack)
        rows = [
            (blob_id, packs[pack], offset, length, raw, blob_type)
            for blob_id, pack, offset, length, raw, blob_type in np.frombuffer(
                records, dtype=FILE_DTYPE
            ).tolist()
        ]
        add = index.add
        started, started_cpu = clocks()
        for row in rows:
            add(*row)
        wall, cpu = wall + time.perf_counter() - started, cpu + time.process_time() - started_cpu
    return wall, cpu


def sample_ids(seed: int, sizes: list[int], count: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` ids in the index (regenerated from the seed) and ``count`` ids not in it."""
    rng = np.random.default_rng([seed, 99])
    present = []
    for number in rng.integers(0, len(sizes), size=min(count, 1000)):
        ids = synthetic_ids(seed, int(number), sizes[int(number)])
        picks = rng.integers(0, len(ids), size=max(1, count // 1000))
        present += [ids[i].tobytes() for i in picks]
    absent_bits = np.random.SFC64(np.random.SeedSequence([seed, 2**31]))
    absent_table = absent_bits.random_raw(count * ID_WORDS).tobytes()
    absent = [absent_table[i * 32 : (i + 1) * 32] for i in range(count)]
    return present[:count], absent


def lookup_rate(index: Index, ids: list[bytes], budget: float) -> tuple[float, float, int, int]:
    """(lookups per second, per CPU second, how many were done, how many were found); stops
    after ``budget`` s."""
    lookup = index.lookup
    found = done = 0
    started, started_cpu = clocks()
    deadline = started + budget
    for start in range(0, len(ids), 256):
        found += sum(1 for blob_id in ids[start : start + 256] if lookup(blob_id) is not None)
        done = min(len(ids), start + 256)
        if time.perf_counter() > deadline:
            break
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return done / wall, done / cpu, done, found


def measure(args: argparse.Namespace) -> dict:
    """Build the index, measure memory and lookups; returns the results."""
    blobs_per_file = args.blobs_per_pack * INDEX_EVERY_PACKS
    sizes = file_sizes(args.entries, blobs_per_file)
    build = build_by_loading if args.mode == "load" else build_by_adding
    gc.collect()
    peak_reset = reset_peak()
    before = memory_status()
    started = time.perf_counter()
    index = Index()
    index_seconds, index_cpu_seconds = build(index, sizes, args.seed, args.blobs_per_pack)
    build_seconds = time.perf_counter() - started
    gc.collect()
    after = memory_status()
    trimmed = memory_status()["VmRSS"] if trim_heap() else None
    present, absent = sample_ids(args.seed, sizes, args.lookups)
    present_rate, present_cpu, present_done, present_found = lookup_rate(
        index, present, args.lookup_seconds
    )
    absent_rate, absent_cpu, absent_done, absent_found = lookup_rate(
        index, absent, args.lookup_seconds
    )
    entries = len(index)
    return {
        "mode": args.mode,
        "entries": entries,
        "packs": len(index.packs),
        "index_files": len(sizes),
        "build_seconds": build_seconds,
        "index_seconds": index_seconds,
        "index_cpu_seconds": index_cpu_seconds,
        "nbytes_per_chunk": index.nbytes() / entries,
        "rss_per_chunk": (after["VmRSS"] - before["VmRSS"]) / entries,
        "trimmed_rss_per_chunk": None if trimmed is None else (trimmed - before["VmRSS"]) / entries,
        "peak_per_chunk": (after["VmHWM"] - before["VmRSS"]) / entries if peak_reset else None,
        "lookups_per_s_present": present_rate,
        "lookups_per_cpu_s_present": present_cpu,
        "present_done": present_done,
        "present_found": present_found,
        "lookups_per_s_absent": absent_rate,
        "lookups_per_cpu_s_absent": absent_cpu,
        "absent_done": absent_done,
        "absent_found": absent_found,
        "target_bytes_per_chunk": TARGET_BYTES_PER_CHUNK,
    }


def print_report(result: dict, command_line: str) -> None:
    """Print the results as a Markdown table with the target."""
    target = result["target_bytes_per_chunk"]

    def verdict(value: float | None) -> str:
        if value is None:
            return "-"
        return "yes" if value <= target else "**no**"

    peak = result["peak_per_chunk"]
    print(f"Command: `{command_line}`  ")
    print(
        f"{result['entries']:,} entries in {result['packs']:,} packs, "
        f"{result['index_files']:,} index files, built with Index."
        f"{'load_file' if result['mode'] == 'load' else 'add'} in "
        f"{result['build_seconds']:.2f} s ({result['index_seconds']:.2f} s in the index's calls, "
        f"{result['entries'] / result['index_seconds']:,.0f} entries/s; CPU time "
        f"{result['index_cpu_seconds']:.2f} s, "
        f"{result['entries'] / result['index_cpu_seconds']:,.0f} entries per CPU second)\n"
    )
    print("| measure | value | target | met |\n|---|---:|---|---|")
    print(
        f"| Index.nbytes() / entries | {result['nbytes_per_chunk']:.1f} B | <= {target} B | "
        f"{verdict(result['nbytes_per_chunk'])} |"
    )
    print(
        f"| RSS growth / entries | {result['rss_per_chunk']:.1f} B | <= {target} B | "
        f"{verdict(result['rss_per_chunk'])} |"
    )
    trimmed = result["trimmed_rss_per_chunk"]
    print(
        f"| RSS growth / entries after malloc_trim(0) | "
        f"{'-' if trimmed is None else f'{trimmed:.1f} B'} | - | - |"
    )
    print(
        f"| peak RSS growth while building / entries | "
        f"{'-' if peak is None else f'{peak:.1f} B'} | - | - |"
    )
    for kind in ("present", "absent"):
        print(
            f"| lookups of {kind} ids | {result[f'lookups_per_s_{kind}']:,.0f} /s, "
            f"{result[f'lookups_per_cpu_s_{kind}']:,.0f} per CPU second "
            f"({result[f'{kind}_found']:,} of {result[f'{kind}_done']:,} found) | - | - |"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the index benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--entries", type=int, default=2_000_000, help="index entries (default 2,000,000)"
    )
    parser.add_argument(
        "--blobs-per-pack",
        type=int,
        default=12,
        help="blobs per pack: 12 for 16 MiB packs of ~1.33 MiB chunks (default)",
    )
    parser.add_argument(
        "--mode",
        choices=("load", "add"),
        default="load",
        help="build with load_file (opening a repository) or add (a backup)",
    )
    parser.add_argument(
        "--lookups",
        type=int,
        default=200_000,
        help="most lookups timed for each of present and absent ids",
    )
    parser.add_argument(
        "--lookup-seconds",
        type=float,
        default=5.0,
        help="stop each lookup measurement after this long (default 5)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    result = measure(args)
    command_line = " ".join([sys.executable, *(sys.argv if argv is None else ["-", *argv])])
    print_report(result, command_line)
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump({"command": command_line, **result}, handle, indent=2)
    bad = result["nbytes_per_chunk"] > TARGET_BYTES_PER_CHUNK
    return 1 if bad or result["rss_per_chunk"] > TARGET_BYTES_PER_CHUNK else 0


if __name__ == "__main__":
    sys.exit(main())
