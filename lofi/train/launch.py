"""`python -m lofi.train.launch <torchrun arguments>`: torchrun itself (its rendezvous,
its agent, its signal handling), without the Python traceback it prints when a rank
fails. Each rank has already printed its own one-line error; this exits with the code
that says most (a user error 2, nothing fits 3, stopped by a signal 130, else the first
failure's). What `lofi train --gpus N` runs."""

from __future__ import annotations

import sys

MEANINGFUL = (130, 3, 2)  # in this order of precedence


def exit_code(codes: list[int]) -> int:
    """The code of a failed run from its ranks' codes (first failure first)."""
    for code in MEANINGFUL:
        if code in codes:
            return code
    code = next((c for c in codes if c), 1)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except ChildFailedError as error:
        first, _ = error.get_first_failure()
        ordered = [error.failures[first], *(f for r, f in error.failures.items() if r != first)]
        return exit_code([failure.exitcode for failure in ordered])
    except SignalException:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
